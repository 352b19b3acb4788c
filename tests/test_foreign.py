"""``FORMAT:SOURCE`` SAEs: converted on the fly, cached, usable by features, evaluate and the Space."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from hf_topafa.cli import main as cli
from hf_topafa.evaluation import text_analysis as sae_inspect
from hf_topafa.evaluation.evaluate import load_sae
from hf_topafa.interop import foreign

pytestmark = pytest.mark.usefixtures("one_thread")

D_IN, D_SAE = 16, 32


@pytest.fixture
def saelens_dir(tmp_path, tiny_lm_dir, monkeypatch):
    """A SAELens 6 inference folder whose metadata names the tiny Llama and its block 1."""
    monkeypatch.setenv("HF_TOPAFA_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "saelens" / "blocks.1.hook_resid_post"
    folder.mkdir(parents=True)
    cfg = {
        "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none",
        "reshape_activations": "none", "architecture": "standard",
        "metadata": {
            "model_name": str(tiny_lm_dir), "hook_name": "blocks.1.hook_resid_post",
            "context_size": 16, "prepend_bos": True, "dataset_path": "bundled",
        },
    }  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(3)
    weights = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g) / 4,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g) / 4,
        "b_enc": torch.randn(D_SAE, generator=g) * 0.1,
        "b_dec": torch.randn(D_IN, generator=g) * 0.1,
    }
    save_file(weights, str(folder / "sae_weights.safetensors"))
    return folder, weights


def test_split_source():
    assert foreign.split_source("saelens:org/repo/blocks.8") == ("saelens", "org/repo/blocks.8")
    assert foreign.split_source("GemmaScope:google/x/layer_5") == (
        "gemma_scope",
        "google/x/layer_5",
    )
    assert foreign.split_source("runs/smollm2-topafa") is None
    assert foreign.split_source("user/repo") is None
    with pytest.raises(ValueError, match="unknown SAE format 'sealens'.*saelens"):
        foreign.split_source("sealens:org/repo")


def test_converted_once_then_cached_and_redone_when_files_change(saelens_dir, tmp_path):
    folder, weights = saelens_dir
    first = foreign.resolve_sae(f"saelens:{folder}")
    assert first.startswith(str(tmp_path / "cache" / "converted"))
    stamp = (tmp_path / "cache" / "converted").stat().st_mtime_ns
    config = json.loads(open(f"{first}/config.json").read())
    assert config["layer"] == 1 and config["hook_point"] == "resid_post"
    assert foreign.resolve_sae(f"saelens:{folder}") == first  # the cached copy
    sae, _ = load_sae(f"saelens:{folder}")
    x = torch.randn(5, D_IN)
    expected = torch.relu((x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"])
    assert torch.allclose(sae.encode(x), expected, atol=1e-5)
    assert (tmp_path / "cache" / "converted").stat().st_mtime_ns == stamp
    weights["b_enc"] = weights["b_enc"] + 1.0  # new files: a new conversion
    save_file(weights, str(folder / "sae_weights.safetensors"))
    assert foreign.resolve_sae(f"saelens:{folder}") != first


def test_features_evaluate_and_space_accept_format_source(saelens_dir, tmp_path, capsys):
    folder, _ = saelens_dir
    name = f"saelens:{folder}"
    out = tmp_path / "feats"
    assert cli(["features", name, "--max-tokens", "120", "--context-length", "16",
                "--top", "2", "--output", str(out)]) == 0  # fmt: skip
    assert (out / "features.parquet").is_file()
    assert (
        cli(["evaluate", name, "--max-tokens", "60", "--holdout", "none", "--no-downstream"]) == 0
    )
    report = capsys.readouterr().out
    assert "relu, d_in 16, d_sae 32" in report and "layer 1 resid_post" in report
    assert " 60 from " in report
    sae = sae_inspect.load_sae(name)
    analysis = sae_inspect.analyze_text(sae, "the cat sat on the mat")
    assert len(analysis.token_ids) == 6
    assert cli(["features", "sealens:x/y", "--output", str(out)]) == 2
    assert "unknown SAE format" in capsys.readouterr().err
