"""``FORMAT:SOURCE`` SAEs on GPT-2, Gemma 2 and Qwen 2 architectures, locally and from the Hub.

Tiny random models of each architecture (hidden size 16, two blocks, a word-level tokenizer)
and one random SAE per format at block 1's residual stream: SAELens, sparsify and
dictionary_learning name their base model in their own metadata (a folder here, a repo of the
stand-in Hub there); Gemma Scope's params.npz names none that exists offline, so ``--model``
gives it. Each combination runs ``evaluate`` (with the downstream splice) and ``features``.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hf_topafa.cli import main as cli

pytestmark = pytest.mark.usefixtures("one_thread")

D_IN, D_SAE, K = 16, 32, 4
ARCHS = ("gpt2", "gemma2", "qwen2")
FORMATS = ("saelens", "sparsify", "gemmascope", "dictionary_learning")
TOKEN = "hf_matrixToken0000000000000000"


def _tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from hf_topafa.data.harvest import BUNDLED_SAMPLE

    words = re.findall(r"\w+|[^\w\s]", BUNDLED_SAMPLE.read_text(encoding="utf-8").lower())
    common = [w for w, _ in collections.Counter(words).most_common(300)]
    vocab = {"<unk>": 0, "<s>": 1, **{w: i + 2 for i, w in enumerate(common)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")
    return fast, len(vocab)


def _model(arch: str, vocab: int):
    import transformers as tf

    if arch == "gpt2":
        config = tf.GPT2Config(n_layer=2, n_embd=D_IN, n_head=2, n_positions=128, vocab_size=vocab)
        return tf.GPT2LMHeadModel(config)
    common = dict(
        vocab_size=vocab, hidden_size=D_IN, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
    )  # fmt: skip
    if arch == "gemma2":
        return tf.Gemma2ForCausalLM(tf.Gemma2Config(**common, head_dim=8))
    return tf.Qwen2ForCausalLM(tf.Qwen2Config(**common))


def _sae_files(fmt: str, folder: Path, base_model: str) -> str:
    """Random SAE files of ``fmt`` for block 1's residual stream under ``folder``; returns the
    path of the SAE inside ``folder`` (what follows the repo id in a Hub source)."""
    g = torch.Generator().manual_seed(len(fmt))
    W_enc = torch.randn(D_IN, D_SAE, generator=g) / 4
    W_dec = torch.randn(D_SAE, D_IN, generator=g) / 4
    b_enc = torch.randn(D_SAE, generator=g) * 0.1
    b_dec = torch.randn(D_IN, generator=g) * 0.1
    if fmt == "saelens":
        inside = "blocks.1.hook_resid_post"
        (folder / inside).mkdir(parents=True)
        cfg = {
            "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "apply_b_dec_to_input": True,
            "normalize_activations": "none", "architecture": "standard",
            "metadata": {"model_name": base_model, "hook_name": "blocks.1.hook_resid_post",
                         "context_size": 16},
        }  # fmt: skip
        (folder / inside / "cfg.json").write_text(json.dumps(cfg))
        tensors = {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}
        save_file(tensors, str(folder / inside / "sae_weights.safetensors"))
    elif fmt == "sparsify":
        inside = "layers.1"
        (folder / inside).mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"model": base_model, "ctx_len": 16}))
        cfg = {"activation": "topk", "d_in": D_IN, "num_latents": D_SAE, "k": K}
        (folder / inside / "cfg.json").write_text(json.dumps(cfg))
        tensors = {"encoder.weight": W_enc.T.contiguous(), "encoder.bias": b_enc}
        save_file(
            {**tensors, "W_dec": W_dec, "b_dec": b_dec}, str(folder / inside / "sae.safetensors")
        )
    elif fmt == "gemmascope":  # Gemma Scope's layout; its repo name gives the hook point
        inside = "layer_1/width_32/average_l0_5"
        (folder / inside).mkdir(parents=True)
        arrays = {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}
        arrays = {k: v.numpy() for k, v in arrays.items()}
        np.savez(folder / inside / "params.npz", threshold=np.full(D_SAE, 0.05, "f4"), **arrays)
    else:
        inside = "resid_post_layer_1/trainer_0"
        (folder / inside).mkdir(parents=True)
        trainer = {
            "dict_class": "AutoEncoder", "activation_dim": D_IN, "dict_size": D_SAE,
            "lm_name": base_model, "layer": 1, "submodule_name": "resid_post_layer_1",
        }  # fmt: skip
        (folder / inside / "config.json").write_text(json.dumps({"trainer": trainer}))
        state = {"encoder.weight": W_enc.T.contiguous(), "encoder.bias": b_enc,
                 "decoder.weight": W_dec.T.contiguous(), "bias": b_dec}  # fmt: skip
        torch.save(state, folder / inside / "ae.pt")
    return inside


def _repo_name(fmt: str, arch: str) -> str:
    return f"gemma-scope-2b-pt-res-{arch}" if fmt == "gemmascope" else f"{fmt}-{arch}"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The models and SAEs, on disk and on a stand-in Hub that the clients are pointed at."""
    import huggingface_hub
    import transformers
    from hub_server import start_hub_server  # tests/ is on sys.path under pytest
    from huggingface_hub import HfApi, constants

    root = tmp_path_factory.mktemp("matrix")
    server = start_hub_server({TOKEN: "alice"})
    endpoint, home = server.endpoint, root / "hf_home"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
            "HF_HUB_DISABLE_XET": "1", "HF_TOPAFA_CACHE": str(root / "cache"),
        }.items():  # fmt: skip
            mp.setenv(key, value)
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
            mp.delenv(key, raising=False)
        for name, value in {
            "ENDPOINT": endpoint,
            "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},
            "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
            "HF_TOKEN_PATH": str(home / "token"), "HF_HUB_DISABLE_XET": True,
            "HF_HUB_OFFLINE": False,
        }.items():  # fmt: skip
            mp.setattr(constants, name, value)
        mp.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
        mp.setattr(transformers.utils.hub, "_hf_api", None)
        api = HfApi(endpoint=endpoint, token=TOKEN)
        tokenizer, vocab = _tokenizer()
        models = {}
        for arch in ARCHS:
            torch.manual_seed(0)
            models[arch] = root / "models" / arch
            _model(arch, vocab).save_pretrained(models[arch])
            tokenizer.save_pretrained(models[arch])
            api.create_repo(f"alice/tiny-{arch}")
            api.upload_folder(repo_id=f"alice/tiny-{arch}", folder_path=models[arch])
        saes = {}
        for arch in ARCHS:
            for fmt in FORMATS:
                local = root / "local" / _repo_name(fmt, arch)
                inside = _sae_files(fmt, local, str(models[arch]))
                hub_files = root / "hub" / _repo_name(fmt, arch)
                _sae_files(fmt, hub_files, f"alice/tiny-{arch}")
                repo = f"alice/{_repo_name(fmt, arch)}"
                api.create_repo(repo)
                api.upload_folder(repo_id=repo, folder_path=hub_files)
                saes[arch, fmt, "local"] = f"{fmt}:{local / inside}"
                saes[arch, fmt, "hub"] = f"{fmt}:{repo}/{inside}"
        yield {"models": models, "saes": saes, "root": root}
    server.shutdown()
    server.server_close()
    assert server.state.unrouted == [], "the clients called endpoints the stand-in Hub lacks"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("where", ["local", "hub"])
def test_evaluate_and_features(world, arch, fmt, where, capsys):
    source = world["saes"][arch, fmt, where]
    # Gemma Scope records google/gemma-2-2b as its model: here the tiny one stands in for it
    model = str(world["models"][arch]) if where == "local" else f"alice/tiny-{arch}"
    extra = ["--model", model] if fmt == "gemmascope" else []
    common = ["--max-tokens", "40", "--context-length", "16", "--holdout", "none", *extra]
    assert cli(["evaluate", source, *common]) == 0, capsys.readouterr().err
    report = capsys.readouterr().out
    rule = {"saelens": "relu", "sparsify": "topk", "gemmascope": "jumprelu"}.get(fmt, "relu")
    assert f"{rule}, d_in {D_IN}, d_sae {D_SAE}" in report, report
    assert "layer 1 resid_post" in report, report
    assert " 40 from " in report and "loss recovered" in report.lower(), report
    out = world["root"] / "features" / f"{where}-{arch}-{fmt}"
    assert cli(["features", source, *common, "--top", "2", "--output", str(out)]) == 0
    import pyarrow.parquet as pq

    table = pq.read_table(out / "features.parquet")
    assert table.num_rows == D_SAE
    assert pq.read_table(out / "examples.parquet").num_rows > 0
