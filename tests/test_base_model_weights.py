"""An SAE records the exact weights it read (file, quantization) and warns when run on others."""

from __future__ import annotations

import json
import warnings

import pytest

from hf_topafa import SparseAutoencoder
from hf_topafa.data import harvest, lm
from hf_topafa.evaluation.evaluate import EvalConfig, evaluate_saes
from hf_topafa.interop.hub import render_model_card
from hf_topafa.training.train import TrainConfig, train


def test_descriptions_name_the_file_and_quantization():
    embedded = lm.weights_description(None)
    assert embedded == lm.weights_description(lm.DEFAULT_MODEL)
    assert lm.EMBEDDED_GGUF in embedded and "Q4_1" in embedded
    assert lm.weights_description("org/repo", "model-Q8_0.gguf") == "model-Q8_0.gguf (GGUF Q8_0)"
    assert lm.weights_description("/m/x.f16.gguf") == "x.f16.gguf (GGUF F16)"
    assert lm.weights_description("gpt2") == lm.stored_weights_description("gpt2")
    assert lm.stored_weights_description(lm.DEFAULT_MODEL) != embedded  # the Hub's own files


def test_harvest_train_and_evaluate_carry_the_weights(tiny_lm_dir, tmp_path):
    model = str(tiny_lm_dir)
    base = dict(model=model, layer=1, context_length=32, batch_windows=8, shuffle_buffer=0)
    cache = harvest.write_cache(
        harvest.HarvestConfig(**base, holdout="train", max_tokens=2048),
        tmp_path / "c",
        progress=False,
    )
    recorded = json.loads((cache / "manifest.json").read_text())["model_weights"]
    assert recorded == lm.stored_weights_description(str(tiny_lm_dir.resolve()))
    run = train(
        TrainConfig.from_flat(
            activation_cache=str(cache),
            output=str(tmp_path / "run"),
            max_tokens=1024,
            expansion_factor=4,
            batch_size=128,
            eval_tokens=128,
            log_with="none",
            progress=False,
            checkpoint_every=0,
        )
    )
    assert json.loads((run / "config.json").read_text())["base_model_weights"] == recorded
    assert f"| Base-model weights | `{recorded}` |" in render_model_card(run)

    cfg = EvalConfig(max_tokens=64, context_length=32, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message="context_length")
        evaluate_saes([str(run)], cfg)  # the same weights: no warning
    sae = SparseAutoencoder.from_pretrained(run)
    sae.config.base_model_weights = lm.weights_description(None)
    sae.save_pretrained(tmp_path / "other")
    with pytest.warns(UserWarning, match="trained on activations of SmolLM2-135M-Instruct.Q4_1"):
        evaluate_saes([str(tmp_path / "other")], cfg)


def test_warning_only_when_recorded_and_different():
    class Cfg:
        base_model_weights = "a.Q4_1.gguf (GGUF Q4_1)"

    with pytest.warns(UserWarning, match="page uses b"):
        lm.warn_if_other_weights(Cfg, "b", "this page")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lm.warn_if_other_weights(Cfg, Cfg.base_model_weights, "this page")
        lm.warn_if_other_weights(object(), "b", "this page")  # older SAEs record nothing
