"""Importing SAEs saved by SAELens, sparsify, Gemma Scope and dictionary_learning.

Each test writes small files laid out exactly as the original library writes them, converts
them, and checks our encode/decode against an independent float64 computation of the original
definition. The layouts relied on (from the libraries' published source):

- SAELens 6 (``SAE.save_model`` / ``save_inference_model``): ``cfg.json`` = the SAEConfig fields
  ``d_in, d_sae, dtype, device, apply_b_dec_to_input, normalize_activations,
  reshape_activations`` (+ ``k, rescale_acts_by_decoder_norm`` for topk), ``architecture`` and a
  ``metadata`` dict (``model_name, hook_name, hook_head_index, dataset_path, context_size, ...``);
  ``sae_weights.safetensors`` = ``W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec``
  (+ ``threshold [d_sae]`` for jumprelu; BatchTopK is saved as jumprelu with a constant threshold).
  SAELens < 6 wrote the metadata at the top level, ``activation_fn_str="topk"`` with
  ``activation_fn_kwargs={"k": k}`` for TopK, and no ``architecture`` for standard SAEs.
- sparsify (``SparseCoder.save_to_disk``): ``<hookpoint>/cfg.json`` = SparseCoderConfig fields +
  ``d_in``; ``<hookpoint>/sae.safetensors`` = ``encoder.weight [M, d_in], encoder.bias [M],
  W_dec [M, d_in], b_dec [d_in]``; the run's ``config.json`` (model, dataset, ctx_len) sits in the
  parent folder. The real library is used to save and to compute the reference numbers.
- Gemma Scope: ``<repo>/layer_L/width_W/average_l0_N/params.npz`` with ``W_enc [d_model, d_sae],
  W_dec [d_sae, d_model], b_enc, b_dec, threshold``; encode ``(p > t) * ReLU(p)``,
  ``p = x W_enc + b_enc``.
- dictionary_learning (``trainSAE``): ``ae.pt`` = ``torch.save(ae.state_dict())`` and
  ``config.json`` = ``{"trainer": trainer.config, "buffer": buffer.config}`` where
  ``trainer.config`` names ``dict_class, activation_dim, dict_size, k, layer, lm_name,
  submodule_name``. State dicts: AutoEncoder ``bias, encoder.weight, encoder.bias,
  decoder.weight``; AutoEncoderTopK / BatchTopKSAE ``encoder.*, decoder.weight, b_dec`` and 0-d
  buffers ``k, threshold``; JumpReluAutoEncoder ``W_enc, b_enc, W_dec, b_dec, threshold``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hf_topafa import SparseAutoencoder
from hf_topafa.interop import convert as convert_module
from hf_topafa.interop.convert import FORMATS, UnsupportedSAEError, cli_main, convert

D_IN, D_SAE, K, N = 12, 48, 5, 64


def _weights(seed: int, b_dec_scale: float = 2.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g) / D_IN**0.5,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g) * (0.5 + torch.rand(D_SAE, 1, generator=g)),
        "b_enc": torch.randn(D_SAE, generator=g) * 0.3,
        "b_dec": torch.randn(D_IN, generator=g) * b_dec_scale,
    }


def _inputs(seed: int = 99) -> torch.Tensor:
    return torch.randn(N, D_IN, generator=torch.Generator().manual_seed(seed)) * 2.0


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _relu(a: np.ndarray) -> np.ndarray:
    return np.maximum(a, 0.0)


def _topk_dense(values: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest entries of each row (raw values, before any ReLU)."""
    out = np.zeros_like(values)
    idx = np.argsort(-values, axis=-1, kind="stable")[:, :k]
    np.put_along_axis(out, idx, np.take_along_axis(values, idx, -1), -1)
    return out


def _check(sae: SparseAutoencoder, x: torch.Tensor, ref_f: np.ndarray, ref_xhat: np.ndarray, tol):
    with torch.no_grad():
        f = sae.encode(x.to(sae.dtype))
        xhat = sae.decode(f)
        out = sae(x.to(sae.dtype))  # the forward pass (sparse or dense path) agrees too
    f, xhat = _np(f), _np(xhat)
    assert ((f != 0) == (ref_f != 0)).all(), "active features differ from the original library"
    np.testing.assert_allclose(f, ref_f, atol=tol, rtol=tol)
    np.testing.assert_allclose(xhat, ref_xhat, atol=tol, rtol=tol)
    np.testing.assert_allclose(_np(out.feature_acts), ref_f, atol=tol, rtol=tol)
    np.testing.assert_allclose(_np(out.reconstruction), ref_xhat, atol=tol, rtol=tol)
    assert (ref_f != 0).any() and (ref_f == 0).any(), "test data must exercise both branches"


# -- SAELens ------------------------------------------------------------------------------------


def _write_saelens(folder, weights, architecture="standard", **cfg_fields):
    """SAELens 6 ``save_inference_model`` layout."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.5.0",
            "sae_lens_training_version": "6.5.0",
            "model_name": "gpt2-small",
            "hook_name": "blocks.8.hook_resid_pre",
            "hook_head_index": None,
            "prepend_bos": True,
            "dataset_path": "Skylion007/openwebtext",
            "context_size": 128,
            "model_from_pretrained_kwargs": {"center_writing_weights": False},
        },
        "architecture": architecture,
    }
    cfg.update(cfg_fields)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(
        {k: v.contiguous() for k, v in weights.items()}, str(folder / "sae_weights.safetensors")
    )
    return folder


def _saelens_reference(w, x, architecture, apply_b_dec=True, k=None, rescale=False, scale=1.0):
    """SAELens encode/decode: StandardSAE, TopKSAE, JumpReLUSAE (input scaled by `scale`)."""
    W_enc, W_dec, b_enc, b_dec = (_np(w[n]) for n in ("W_enc", "W_dec", "b_enc", "b_dec"))
    sae_in = _np(x) * scale - (b_dec if apply_b_dec else 0.0)
    hidden = sae_in @ W_enc + b_enc
    norms = np.linalg.norm(W_dec, axis=-1)
    if architecture == "standard":
        f = _relu(hidden)
    elif architecture == "topk":
        if rescale:
            hidden = hidden * norms
        f = _relu(_topk_dense(hidden, k))  # torch.topk on raw values, then ReLU
    else:
        f = _relu(hidden) * (hidden > _np(w["threshold"]))
    xhat = (f / norms if rescale else f) @ W_dec + b_dec
    return f / scale if rescale else f, xhat / scale


@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_saelens_matches_original_definition(tmp_path, architecture, apply_b_dec):
    w = _weights(1)
    extra = {"apply_b_dec_to_input": apply_b_dec}
    if architecture == "topk":
        extra.update(k=K, rescale_acts_by_decoder_norm=False)
    if architecture == "jumprelu":
        w["threshold"] = torch.rand(D_SAE, generator=torch.Generator().manual_seed(5)) * 0.8
    src = _write_saelens(tmp_path / "sae", w, architecture, **extra)
    sae = convert("saelens", src, dtype="float64")
    x = _inputs()
    ref_f, ref_xhat = _saelens_reference(w, x, architecture, apply_b_dec, k=K)
    _check(sae, x, ref_f, ref_xhat, tol=1e-10)
    assert sae.config.activation == {"standard": "relu"}.get(architecture, architecture)
    assert (sae.config.layer, sae.config.hook_point) == (8, "resid_pre")
    assert sae.config.base_model == "openai-community/gpt2"
    assert sae.config.source_hook_name == "blocks.8.hook_resid_pre"
    assert sae.config.source_model_from_pretrained_kwargs == {"center_writing_weights": False}
    assert (sae.config.dataset, sae.config.context_length) == ("Skylion007/openwebtext", 128)


def test_saelens_float32_default_is_close_and_keeps_the_active_set(tmp_path):
    w = _weights(2)
    src = _write_saelens(tmp_path / "sae", w, "standard", apply_b_dec_to_input=False)
    sae = convert("saelens", src)
    assert sae.dtype == torch.float32 and not sae.training
    x = _inputs()
    _check(sae, x, *_saelens_reference(w, x, "standard", apply_b_dec=False), tol=1e-4)


def test_saelens_jumprelu_negative_thresholds_are_exact(tmp_path):
    """ReLU(p) * [p > t] equals our ReLU-first rule for t < 0 too (both are ReLU(p) there)."""
    w = _weights(3)
    w["threshold"] = torch.linspace(-1.0, 1.0, D_SAE)
    src = _write_saelens(tmp_path / "sae", w, "jumprelu", apply_b_dec_to_input=False)
    sae = convert("saelens", src, dtype="float64")
    x = _inputs()
    _check(sae, x, *_saelens_reference(w, x, "jumprelu", apply_b_dec=False), tol=1e-10)


def test_saelens_batchtopk_saved_as_jumprelu(tmp_path):
    """BatchTopKTrainingSAE saves threshold = ones * topk_threshold under architecture jumprelu."""
    w = _weights(4)
    w["threshold"] = torch.full((D_SAE,), 0.4)
    src = _write_saelens(tmp_path / "sae", w, "jumprelu")
    sae = convert("saelens", src, dtype="float64")
    x = _inputs()
    _check(sae, x, *_saelens_reference(w, x, "jumprelu"), tol=1e-10)
    assert torch.all(sae.threshold == torch.tensor(0.4).double())  # the saved float32 value


def test_saelens_topk_rescaled_by_decoder_norm_and_input_scale(tmp_path):
    """rescale_acts_by_decoder_norm and expected_average_only_in fold as SAE.from_pretrained does."""
    w = _weights(5)
    src = _write_saelens(
        tmp_path / "sae",
        w,
        "topk",
        k=K,
        rescale_acts_by_decoder_norm=True,
        normalize_activations="expected_average_only_in",
    )
    with pytest.raises(UnsupportedSAEError, match="norm_scaling_factor"):
        convert("saelens", src)
    sae = convert("saelens", src, norm_scaling_factor=3.0, dtype="float64")
    x = _inputs()
    ref = _saelens_reference(w, x, "topk", k=K, rescale=True, scale=3.0)
    _check(sae, x, *ref, tol=1e-10)


def test_saelens_legacy_flat_config_topk(tmp_path):
    """SAELens < 6: metadata at the top level, TopK given by activation_fn_str + kwargs."""
    w = _weights(6)
    folder = tmp_path / "legacy"
    folder.mkdir()
    cfg = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "torch.float32",
        "device": "cpu",
        "model_name": "gpt2-small",
        "hook_name": "blocks.3.hook_mlp_out",
        "hook_layer": 3,
        "hook_head_index": None,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": K},
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "context_size": 128,
        "dataset_path": "apollo-research/roneneldan-TinyStories-tokenizer-gpt2",
        "normalize_activations": False,
        "sae_lens_training_version": "3.12.0",
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(w, str(folder / "sae_weights.safetensors"))
    sae = convert("saelens", folder / "cfg.json", dtype="float64")  # a file inside works too
    x = _inputs()
    _check(sae, x, *_saelens_reference(w, x, "topk", k=K), tol=1e-10)
    assert (sae.config.activation, sae.config.k) == ("topk", K)
    assert (sae.config.layer, sae.config.hook_point) == (3, "mlp_out")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"normalize_activations": "constant_norm_rescale"}, "constant_norm_rescale"),
        ({"architecture": "gated"}, "gated"),
        ({"architecture": "batchtopk"}, "jumprelu"),
        ({"reshape_activations": "hook_z"}, "hook_z"),
    ],
)
def test_saelens_inexpressible_variants_are_refused(tmp_path, fields, message):
    src = _write_saelens(tmp_path / "sae", _weights(7), **fields)
    with pytest.raises(UnsupportedSAEError, match=message):
        convert("saelens", src)


def test_saelens_layer_norm_is_our_standardization(tmp_path):
    """SAELens layer_norm: (x - mean) / (std + 1e-5) with the unbiased std, undone on the way
    out; it reads as input_normalization="layer_norm" with the same numbers."""
    w = _weights(8)
    src = _write_saelens(tmp_path / "sae", w, "standard", normalize_activations="layer_norm")
    sae = convert("saelens", src, dtype="float64")
    assert sae.config.input_normalization == "layer_norm"
    x = _inputs() * 3 + 1
    a = _np(x)
    mean, std = a.mean(-1, keepdims=True), a.std(-1, ddof=1, keepdims=True)
    ref_f, ref_xhat_n = _saelens_reference(
        w, torch.from_numpy((a - mean) / (std + 1e-5)), "standard"
    )
    _check(sae, x, ref_f, ref_xhat_n * std + mean, tol=1e-9)


def test_saelens_unknown_tensor_is_refused(tmp_path):
    w = _weights(8)
    w["r_mag"] = torch.zeros(D_SAE)
    src = _write_saelens(tmp_path / "sae", w)
    with pytest.raises(UnsupportedSAEError, match="r_mag"):
        convert("saelens", src)


# -- sparsify (the real library) ----------------------------------------------------------------


def test_sparsify_saved_by_the_library_matches_its_encode_and_decode(tmp_path):
    sparsify = pytest.importorskip("sparsify", reason="reference library eai-sparsify")
    torch.manual_seed(0)
    coder = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(num_latents=D_SAE, k=K))
    with torch.no_grad():  # a trained coder: non-unit decoder rows, nonzero biases
        coder.W_dec.mul_(0.5 + torch.rand(D_SAE, 1))
        coder.encoder.bias.normal_(0, 0.3)
        coder.b_dec.normal_(0, 2.0)
    coder.save_to_disk(tmp_path / "run" / "layers.7.mlp")
    (tmp_path / "run" / "config.json").write_text(
        json.dumps(
            {
                "model": "HuggingFaceTB/SmolLM2-135M",
                "dataset": "EleutherAI/fineweb-edu-dedup-10b",
                "ctx_len": 2048,
            }
        )
    )
    sae = convert("sparsify", tmp_path / "run" / "layers.7.mlp")
    x = _inputs()
    with torch.no_grad():
        top = coder.encode(x)
        ref_f = torch.zeros(N, D_SAE).scatter(-1, top.top_indices, top.top_acts)
        ref_xhat = coder.decode(top.top_acts, top.top_indices)
    _check(sae, x, _np(ref_f), _np(ref_xhat), tol=1e-5)
    cfg = sae.config
    assert (cfg.activation, cfg.k, cfg.layer, cfg.hook_point) == ("topk", K, 7, "mlp_out")
    assert (cfg.base_model, cfg.context_length) == ("HuggingFaceTB/SmolLM2-135M", 2048)


def _write_sparsify(folder, **cfg_fields):
    """SparseCoder.save_to_disk layout, written by hand (bf16 weights, as sparsify trains)."""
    folder.mkdir(parents=True)
    w = _weights(9)
    cfg = {"activation": "topk", "expansion_factor": 4, "normalize_decoder": True}
    cfg.update(num_latents=0, k=K, multi_topk=False, skip_connection=False, transcode=False)
    cfg.update(d_in=D_IN, **cfg_fields)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    tensors = {
        "encoder.weight": w["W_enc"].T.contiguous(),
        "encoder.bias": w["b_enc"],
        "W_dec": w["W_dec"],
        "b_dec": w["b_dec"],
    }
    save_file(
        {k: v.to(torch.bfloat16) for k, v in tensors.items()}, str(folder / "sae.safetensors")
    )
    return {k: v.to(torch.bfloat16).double() for k, v in tensors.items()}


def test_sparsify_definition_with_expansion_factor_and_bf16(tmp_path):
    t = _write_sparsify(tmp_path / "layers.2")
    sae = convert("sparsify", tmp_path / "layers.2", dtype="float64")
    assert sae.config.d_sae == 4 * D_IN  # num_latents=0 means d_in * expansion_factor
    x = _inputs()
    # sparsify: top_k(ReLU(F.linear(x - b_dec, encoder.weight, encoder.bias))); decode rows of W_dec
    pre = _relu((_np(x) - _np(t["b_dec"])) @ _np(t["encoder.weight"]).T + _np(t["encoder.bias"]))
    ref_f = _topk_dense(pre, K)
    _check(sae, x, ref_f, ref_f @ _np(t["W_dec"]) + _np(t["b_dec"]), tol=1e-10)
    assert (sae.config.layer, sae.config.hook_point) == (2, "resid_post")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"transcode": True}, "transcode"),
        ({"skip_connection": True}, "skip_connection"),
        ({"activation": "groupmax"}, "groupmax"),
        ({"signed": True}, "signed"),
    ],
)
def test_sparsify_inexpressible_variants_are_refused(tmp_path, fields, message):
    _write_sparsify(tmp_path / "layers.1", **fields)
    with pytest.raises(UnsupportedSAEError, match=message):
        convert("sparsify", tmp_path / "layers.1")


def test_sparsify_parent_folder_lists_hookpoints(tmp_path):
    _write_sparsify(tmp_path / "run" / "layers.1")
    _write_sparsify(tmp_path / "run" / "layers.2")
    with pytest.raises(FileNotFoundError, match="layers.1, layers.2"):
        convert("sparsify", tmp_path / "run")


# -- Gemma Scope --------------------------------------------------------------------------------


def _write_gemma_scope(tmp_path, threshold):
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_5" / "width_16k" / "average_l0_10"
    folder.mkdir(parents=True)
    w = {k: v.numpy() for k, v in _weights(10, b_dec_scale=5.0).items()}
    w["threshold"] = threshold
    np.savez(folder / "params.npz", **w)
    return folder, w


def test_gemma_scope_matches_original_definition(tmp_path):
    threshold = np.random.default_rng(0).uniform(0.0, 0.8, D_SAE).astype(np.float32)
    threshold[:3] = 0.0  # t = 0 is exact too: p * [p > 0] == ReLU(p)
    folder, w = _write_gemma_scope(tmp_path, threshold)
    sae = convert("gemma_scope", folder / "params.npz", dtype="float64")
    x = _inputs()
    pre = _np(x) @ w["W_enc"] + w["b_enc"]  # no b_dec on the input
    ref_f = (pre > w["threshold"]) * _relu(pre)
    np.testing.assert_array_equal(ref_f, pre * (pre > w["threshold"]))  # paper form agrees
    _check(sae, x, ref_f, ref_f @ w["W_dec"] + w["b_dec"], tol=1e-10)
    cfg = sae.config
    assert (cfg.base_model, cfg.layer, cfg.hook_point) == ("google/gemma-2-2b", 5, "resid_post")
    assert cfg.source_hook_name == "blocks.5.hook_resid_post"


def test_gemma_scope_negative_threshold_is_refused(tmp_path):
    threshold = np.full(D_SAE, 0.1, dtype=np.float32)
    threshold[4] = -0.2
    folder, _ = _write_gemma_scope(tmp_path, threshold)
    with pytest.raises(UnsupportedSAEError, match="1 thresholds are negative"):
        convert("gemma-scope", folder)


def test_gemma_scope_pickled_npz_is_not_loaded(tmp_path):
    folder = tmp_path / "g"
    folder.mkdir()
    np.savez(folder / "params.npz", W_enc=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a readable .npz"):
        convert("gemma_scope", folder)


# -- dictionary_learning ------------------------------------------------------------------------


def _write_dictionary_learning(folder, dict_class, state, **trainer):
    folder.mkdir(parents=True)
    torch.save(state, folder / "ae.pt")
    config = {
        "trainer": {
            "dict_class": dict_class,
            "trainer_class": {"AutoEncoder": "StandardTrainer"}.get(dict_class, "TrainerX"),
            "activation_dim": D_IN,
            "dict_size": D_SAE,
            "lr": 1e-4,
            "layer": 4,
            "lm_name": "EleutherAI/pythia-70m-deduped",
            "submodule_name": "resid_post_layer_4",
            **trainer,
        },
        "buffer": {"d_submodule": D_IN, "io": "out", "n_ctxs": 3000, "ctx_len": 128},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=4))
    return folder


def _linear_state(seed, bias_name):
    w = _weights(seed)
    return {
        "encoder.weight": w["W_enc"].T.contiguous(),
        "encoder.bias": w["b_enc"],
        "decoder.weight": w["W_dec"].T.contiguous(),
        bias_name: w["b_dec"],
    }


@pytest.mark.parametrize("normalize_decoder", [True, False])
def test_dictionary_learning_autoencoder(tmp_path, normalize_decoder):
    state = _linear_state(11, "bias")
    src = _write_dictionary_learning(tmp_path / "ae", "AutoEncoder", state)
    sae = convert("dictionary_learning", src, normalize_decoder=normalize_decoder, dtype="float64")
    x = _inputs()
    enc_w, enc_b = _np(state["encoder.weight"]), _np(state["encoder.bias"])
    dec_w, bias = _np(state["decoder.weight"]), _np(state["bias"])
    f = _relu((_np(x) - bias) @ enc_w.T + enc_b)  # ReLU(encoder(x - bias))
    if normalize_decoder:  # from_pretrained: decoder columns -> unit norm, encoder scaled up
        f = f * np.linalg.norm(dec_w, axis=0)
        dec_w = dec_w / np.linalg.norm(dec_w, axis=0)
    _check(sae, x, f, f @ dec_w.T + bias, tol=1e-10)
    cfg = sae.config
    assert (cfg.activation, cfg.layer, cfg.hook_point) == ("relu", 4, "resid_post")
    assert cfg.base_model == "EleutherAI/pythia-70m-deduped" and cfg.context_length == 128


def test_dictionary_learning_topk_and_batchtopk(tmp_path):
    x = _inputs()
    state = _linear_state(12, "b_dec")
    state.update(k=torch.tensor(K, dtype=torch.int), threshold=torch.tensor(0.3))
    topk = convert(
        "dictionary_learning",
        _write_dictionary_learning(tmp_path / "t", "AutoEncoderTopK", state),
        dtype="float64",
    )
    batch = convert(
        "dictionary_learning",
        _write_dictionary_learning(tmp_path / "b", "BatchTopKSAE", state),
        dtype="float64",
    )
    pre = _relu(
        (_np(x) - _np(state["b_dec"])) @ _np(state["encoder.weight"]).T + _np(state["encoder.bias"])
    )
    dec = _np(state["decoder.weight"]).T
    ref_topk = _topk_dense(pre, K)  # AutoEncoderTopK.encode (use_threshold=False by default)
    _check(topk, x, ref_topk, ref_topk @ dec + _np(state["b_dec"]), tol=1e-10)
    ref_batch = pre * (pre > 0.3)  # BatchTopKSAE.encode (use_threshold=True by default)
    _check(batch, x, ref_batch, ref_batch @ dec + _np(state["b_dec"]), tol=1e-10)
    assert (topk.config.activation, topk.config.k) == ("topk", K)
    assert (batch.config.activation, batch.config.k) == ("batchtopk", K)


def test_dictionary_learning_topk_without_k_buffer_reads_trainer_k(tmp_path):
    state = _linear_state(13, "b_dec")  # older AutoEncoderTopK: no k buffer in the state dict
    src = _write_dictionary_learning(tmp_path / "t", "AutoEncoderTopK", state, k=7)
    assert convert("dictionary_learning", src).config.k == 7


def test_dictionary_learning_jumprelu(tmp_path):
    w = _weights(14)
    w["threshold"] = torch.linspace(-0.5, 1.0, D_SAE)  # any sign is exact (ReLU after the jump)
    src = _write_dictionary_learning(tmp_path / "j", "JumpReluAutoEncoder", w)
    sae = convert("dictionary_learning", src / "ae.pt", dtype="float64")
    x = _inputs()
    pre = _np(x) @ _np(w["W_enc"]) + _np(w["b_enc"])  # apply_b_dec_to_input defaults to False
    f = _relu(pre * (pre > _np(w["threshold"])))
    _check(sae, x, f, f @ _np(w["W_dec"]) + _np(w["b_dec"]), tol=1e-10)


def test_dictionary_learning_refusals(tmp_path):
    state = _linear_state(15, "b_dec")
    state.update(k=torch.tensor(K), threshold=torch.tensor(-1.0))
    src = _write_dictionary_learning(tmp_path / "g", "GatedAutoEncoder", state)
    with pytest.raises(UnsupportedSAEError, match="GatedAutoEncoder"):
        convert("dictionary_learning", src)
    (tmp_path / "nocfg").mkdir()
    torch.save(state, tmp_path / "nocfg" / "ae.pt")
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert("dictionary_learning", tmp_path / "nocfg")


@pytest.mark.parametrize("dict_class", ["BatchTopKSAE", "MatryoshkaBatchTopKSAE"])
@pytest.mark.parametrize("threshold", [0.3, -1.0])
def test_dictionary_learning_batchtopk_threshold_rule(tmp_path, dict_class, threshold):
    """encode(use_threshold=True): ReLU(pre) * (ReLU(pre) > t); t = -1 (uncalibrated) is ReLU."""
    w = _weights(17)
    if dict_class == "BatchTopKSAE":
        state = _linear_state(17, "b_dec")
    else:  # W_enc [d_in, d_sae], W_dec [d_sae, d_in] and a group_sizes buffer
        state = dict(w, group_sizes=torch.tensor([D_SAE // 4, D_SAE - D_SAE // 4]))
    state.update(k=torch.tensor(K, dtype=torch.int), threshold=torch.tensor(threshold))
    src = _write_dictionary_learning(tmp_path / "b", dict_class, state)
    sae = convert("dictionary_learning", src, dtype="float64")
    x = _inputs()
    pre = _relu((_np(x) - _np(w["b_dec"])) @ _np(w["W_enc"]) + _np(w["b_enc"]))
    ref = pre * (pre > threshold)
    _check(sae, x, ref, ref @ _np(w["W_dec"]) + _np(w["b_dec"]), tol=1e-10)
    expected = ("relu", None) if threshold < 0 else ("batchtopk", K)
    assert (sae.config.activation, sae.config.k) == expected


def test_dictionary_learning_file_path_converts_that_file(tmp_path):
    """checkpoints/ae_<step>.pt is converted itself, with the run's config.json one folder up."""
    src = _write_dictionary_learning(tmp_path / "run", "AutoEncoder", _linear_state(18, "bias"))
    (src / "checkpoints").mkdir()
    step = _linear_state(19, "bias")
    torch.save(step, src / "checkpoints" / "ae_100.pt")
    torch.save(_linear_state(20, "bias"), src / "ae_step7.pt")
    final = convert("dictionary_learning", src, normalize_decoder=False, dtype="float64")
    ckpt = convert(
        "dictionary_learning",
        src / "checkpoints" / "ae_100.pt",
        normalize_decoder=False,
        dtype="float64",
    )
    beside = convert("dictionary_learning", src / "ae_step7.pt", normalize_decoder=False)
    assert torch.equal(ckpt.W_enc, step["encoder.weight"].double().T)
    assert not torch.equal(final.W_enc, ckpt.W_enc)
    assert beside.config.source_weights_file == "ae_step7.pt"
    assert torch.equal(beside.b_dec, _linear_state(20, "bias")["bias"])
    with pytest.raises(ValueError, match="not a .pt file"):
        convert("dictionary_learning", src / "config.json")
    lone = tmp_path / "lone"
    lone.mkdir()
    torch.save(step, lone / "ae_1.pt")
    with pytest.raises(FileNotFoundError, match="no config.json next to"):
        convert("dictionary_learning", lone / "ae_1.pt")


def test_file_path_that_is_not_the_format_file_is_refused(tmp_path):
    """A file path never silently converts the folder's default file instead."""
    src = _write_saelens(tmp_path / "sae", _weights(21))
    save_file(_weights(22), str(src / "sae_weights_step100.safetensors"))
    with pytest.raises(ValueError, match="sae_weights_step100.safetensors is not one of"):
        convert("saelens", src / "sae_weights_step100.safetensors")


@pytest.mark.parametrize("architecture", ["batchtopk", "matryoshka_batchtopk"])
def test_saelens_batchtopk_training_checkpoint_converts_like_its_inference_file(
    tmp_path, architecture
):
    """save_inference_model folds decoder norms and writes threshold = ones * topk_threshold."""
    w = _weights(23)
    extra = {"matryoshka_widths": [D_SAE // 2, D_SAE]} if architecture != "batchtopk" else {}
    train_w = dict(w, topk_threshold=torch.tensor(0.37, dtype=torch.float64))
    src = _write_saelens(
        tmp_path / "ckpt",
        train_w,
        architecture,
        k=float(K),
        topk_threshold_lr=0.01,
        rescale_acts_by_decoder_norm=True,
        **extra,
    )
    sae = convert("saelens", src, dtype="float64")
    # The inference file, written independently: fold W_dec norms, threshold in b_enc's dtype.
    norms = torch.linalg.vector_norm(w["W_dec"], dim=-1, keepdim=True)
    inference = {
        "W_enc": w["W_enc"] * norms.T,
        "b_enc": w["b_enc"] * norms[:, 0],
        "W_dec": w["W_dec"] / norms,
        "b_dec": w["b_dec"],
        "threshold": torch.ones_like(w["b_enc"]) * 0.37,
    }
    x = _inputs()
    _check(sae, x, *_saelens_reference(inference, x, "jumprelu"), tol=1e-5)
    from_inference = convert(
        "saelens", _write_saelens(tmp_path / "inf", inference, "jumprelu"), dtype="float64"
    )
    assert torch.equal(sae.threshold, from_inference.threshold)
    assert sae.config.activation == "jumprelu" and sae.config.source_k == K
    assert sae.config.source_architecture == architecture
    del train_w["topk_threshold"]
    bare = _write_saelens(tmp_path / "bare", train_w, architecture, k=float(K), **extra)
    with pytest.raises(UnsupportedSAEError, match="no topk_threshold"):
        convert("saelens", bare)


def test_dictionary_learning_pickled_objects_are_not_unpickled(tmp_path):
    import argparse

    src = _write_dictionary_learning(tmp_path / "p", "AutoEncoder", _linear_state(16, "bias"))
    torch.save({"encoder.weight": argparse.Namespace(x=1)}, src / "ae.pt")  # an arbitrary object
    with pytest.raises(ValueError, match="tensor-only state dict"):
        convert("dictionary_learning", src)


# -- saving, CLI, sources and errors ------------------------------------------------------------


def test_converted_folder_reloads_with_provenance(tmp_path):
    w = _weights(17)
    w["threshold"] = torch.full((D_SAE,), 0.2)
    src = _write_saelens(tmp_path / "sae", w, "jumprelu", apply_b_dec_to_input=False)
    out = tmp_path / "out"
    sae = convert("saelens", src, out, layer=9, base_model="gpt2")
    loaded = SparseAutoencoder.from_pretrained(out)
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), sae.encode(x), rtol=0, atol=0)
    assert (loaded.config.layer, loaded.config.base_model) == (9, "gpt2")  # overrides win
    assert loaded.config.source_format == "saelens"
    assert loaded.config.source_hook_name == "blocks.8.hook_resid_pre"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "sae"]  # no temp folder left
    with pytest.raises(FileExistsError, match="overwrite"):
        convert("saelens", src, out)
    convert("saelens", src, out, overwrite=True)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a saved SAE"):
        convert("saelens", src, tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_cli_converts_and_reports_errors(tmp_path, capsys):
    src = _write_saelens(tmp_path / "sae", _weights(18), "topk", k=K)
    out = tmp_path / "out"
    assert cli_main(["--from", "saelens", str(src), str(out), "--hook-point", "resid_post"]) == 0
    assert "activation=topk, k=5" in capsys.readouterr().out
    assert SparseAutoencoder.from_pretrained(out).config.hook_point == "resid_post"
    assert cli_main(["--from", "gemmascope", str(src), str(tmp_path / "o2")]) == 2  # README name
    assert "params.npz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["--from", "onnx", str(src), str(out)])


def test_cli_dispatcher_runs_convert(tmp_path):
    from hf_topafa.cli import main

    src = _write_saelens(tmp_path / "sae", _weights(19))
    assert main(["convert", "--from", "saelens", str(src), str(tmp_path / "o")]) == 0


def test_unknown_format_option_and_missing_source(tmp_path):
    with pytest.raises(ValueError, match=", ".join(FORMATS)):
        convert("onnx", tmp_path)
    src = _write_saelens(tmp_path / "sae", _weights(20))
    with pytest.raises(ValueError, match="unknown or inapplicable option 'normalize_decoder'"):
        convert("saelens", src, normalize_decoder=False)
    with pytest.raises(ValueError, match="hook_point must be one of"):
        convert("saelens", src, hook_point="resid_middle")
    with pytest.raises(FileNotFoundError, match="neither an existing file"):
        convert("saelens", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="sae_weights.safetensors"):
        convert("saelens", tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cfg.json").write_text("{not json")
    (tmp_path / "bad" / "sae_weights.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(ValueError, match="not valid JSON"):
        convert("saelens", tmp_path / "bad")


def test_hub_source_downloads_only_the_needed_files(tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = tmp_path / "snapshot"
    _write_saelens(snapshot / "blocks.8.hook_resid_pre", _weights(21))
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    sae = convert("saelens", "jbloom/GPT2-Small-SAEs-Reformatted/blocks.8.hook_resid_pre")
    assert calls == [
        (
            "jbloom/GPT2-Small-SAEs-Reformatted",
            ["blocks.8.hook_resid_pre/cfg.json", "blocks.8.hook_resid_pre/sae_weights.safetensors"],
        )
    ]
    assert sae.config.source == "jbloom/GPT2-Small-SAEs-Reformatted/blocks.8.hook_resid_pre"

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OSError, match="download the files yourself"):
        convert("gemma_scope", "google/gemma-scope-2b-pt-res/layer_5/width_16k/average_l0_10")


def test_every_format_has_a_reader():
    assert set(convert_module._READERS) == set(FORMATS)


# -- a converted SAE runs through `hf-topafa evaluate` ------------------------------------------


def test_converted_saelens_sae_runs_through_evaluate(tmp_path, smollm2):
    """SAELens TopK SAE on SmolLM2 layer 3 resid_post -> convert CLI -> evaluate CLI (256 tokens)."""
    from hf_topafa.cli import main

    d_in, d_sae, k = 576, 1152, 16
    g = torch.Generator().manual_seed(0)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    weights = {"W_enc": W_dec.T.contiguous(), "W_dec": W_dec}
    weights.update(b_enc=torch.zeros(d_sae), b_dec=torch.zeros(d_in))
    src = tmp_path / "saelens"
    src.mkdir()
    cfg = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu"}
    cfg.update(apply_b_dec_to_input=True, normalize_activations="none", reshape_activations="none")
    cfg.update(architecture="topk", k=k, rescale_acts_by_decoder_norm=False)
    cfg["metadata"] = {
        "sae_lens_version": "6.5.0",
        "model_name": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "hook_name": "blocks.3.hook_resid_post",
        "context_size": 128,
    }
    (src / "cfg.json").write_text(json.dumps(cfg))
    save_file(weights, str(src / "sae_weights.safetensors"))
    out = tmp_path / "converted"
    assert main(["convert", "--from", "saelens", str(src), str(out)]) == 0
    report = tmp_path / "metrics.json"
    args = ["evaluate", str(out), "--max-tokens", "256", "--json", str(report)]
    assert main(args + ["--context-length", "64", "--batch-windows", "8"]) == 0
    metrics = json.loads(report.read_text())
    assert (metrics["layer"], metrics["hook_point"], metrics["num_tokens"]) == (
        3,
        "resid_post",
        256,
    )
    assert metrics["sparsity"]["l0_mean"] == k  # TopK: exactly k active features per token
    assert 0 < metrics["reconstruction"]["normalized_mse"] < 10
    assert np.isfinite(metrics["downstream"]["loss_recovered"])
