import json
import os

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModel

from hf_topafa import ACTIVATIONS, SAEConfig, SparseAutoencoder
from hf_topafa.sae import afa


def make_sae(activation="topafa", d_in=16, d_sae=64, **kwargs):
    if activation in ("topk", "batchtopk"):
        kwargs.setdefault("k", 4)
    torch.manual_seed(0)
    return SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=d_sae, activation=activation, **kwargs))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_forward_fields_and_losses(activation):
    sae = make_sae(activation)
    x = torch.randn(3, 5, 16) * 3
    out = sae(x, dead_mask=torch.arange(64) % 2 == 0)
    assert out.reconstruction.shape == (3, 5, 16)
    assert out.feature_acts.shape == (3, 5, 64)
    assert out.l0.shape == (3, 5)
    assert torch.equal(out.l0, (out.feature_acts != 0).sum(-1).float())
    # the pieces add up to the total
    expected = (
        out.mse_loss
        + sae.config.afa_coef * out.afa_loss
        + sae.config.aux_coef * out.aux_loss
        + out.sparsity_loss
    )
    assert torch.allclose(out.loss, expected)
    x_flat = x.reshape(-1, 16)
    mse = (out.reconstruction.reshape(-1, 16) - x_flat).pow(2).sum() / x_flat.pow(2).sum()
    assert torch.allclose(out.mse_loss, mse, rtol=1e-5)
    assert out.aux_loss > 0  # half the features are marked dead, so the aux-k term is active
    out.loss.backward()
    # the paper's TopK, BatchTopK and top-AFA encoders have no trained bias; ReLU's and JumpReLU's do
    assert sae.b_enc.requires_grad == (activation in ("relu", "jumprelu"))
    assert all(p.grad is not None for p in sae.parameters() if p.requires_grad)
    # encode/decode give the same numbers as the forward pass
    acts = sae.encode(x)
    if activation != "batchtopk":  # batchtopk updates its threshold in train mode
        assert torch.allclose(acts, out.feature_acts)
    assert torch.allclose(sae.decode(out.feature_acts), out.reconstruction, atol=1e-5)


def test_topafa_k_reported_and_matches_l0_for_positive_preactivations():
    sae = make_sae("topafa")
    x = torch.randn(40, 16) * 5
    out = sae(x)
    assert out.k.shape == (40,)
    assert (out.l0 <= out.k).all() and (out.k >= 1).all()
    pre = sae.pre_activations(x)
    target = (x - sae.b_dec).norm(dim=-1)
    from hf_topafa.sae import activations

    ref, ref_k = activations.topafa_reference(pre, sae.W_dec.norm(dim=-1), target)
    assert torch.equal(ref_k, out.k)
    assert torch.allclose(ref, out.feature_acts)


def test_afa_loss_is_norm_matching():
    sae = make_sae("topk", k=8)  # the paper's convention: ||f|| of the kept activations
    x = torch.randn(10, 16) * 3
    out = sae(x)
    expected = (out.feature_acts.norm(dim=-1) - x.norm(dim=-1)).pow(2).mean() / x.pow(2).mean()
    assert torch.allclose(out.afa_loss, expected)


def test_afa_loss_of_the_v01_convention():
    sae = make_sae("topk", k=8, loss_convention="hf_topafa_v0.1")
    with torch.no_grad():
        sae.b_dec.normal_()
    x = torch.randn(10, 16)
    out = sae(x)
    f_norm = afa.scaled_feature_norm(out.feature_acts, sae.W_dec, sae.b_dec)
    expected = (f_norm - x.norm(dim=-1)).pow(2).sum() / x.pow(2).sum()
    assert torch.allclose(out.afa_loss, expected)


def test_no_dead_features_means_no_aux_loss():
    sae = make_sae("topafa")
    out = sae(torch.randn(4, 16), dead_mask=torch.zeros(64, dtype=torch.bool))
    assert out.aux_loss.item() == 0.0


def test_layer_norm_input_normalization():
    sae = make_sae("relu", input_normalization="layer_norm")
    x = torch.randn(6, 16) * 10 + 3
    x_n, mean, std = sae.normalize_input(x)
    assert torch.allclose(x_n.mean(-1), torch.zeros(6), atol=1e-5)
    # the paper's: torch's unbiased std plus 1e-5 (a biased std would give sqrt(16/15) here)
    assert torch.allclose(x_n.std(-1), torch.ones(6), atol=1e-5)
    centred = x - x.mean(-1, keepdim=True)
    by_hand = centred / (centred.pow(2).sum(-1, keepdim=True) / 15).sqrt().add(1e-5)
    assert torch.allclose(x_n, by_hand, atol=1e-6)
    biased = make_sae("relu", input_normalization="layer_norm_biased").normalize_input(x)[0]
    assert torch.allclose(biased.std(-1, unbiased=False), torch.ones(6), atol=1e-5)
    out = sae(x)
    # the reconstruction comes back in the input's own space
    x_hat_n = sae.decode_normalized(out.feature_acts)
    assert torch.allclose(out.reconstruction, x_hat_n * std + mean, atol=1e-4)


@pytest.mark.parametrize("normalization", ["none", "layer_norm", "layer_norm_biased"])
@pytest.mark.parametrize("activation", ["topafa", "relu"])
def test_decode_of_encode_is_in_the_input_space(activation, normalization):
    """decode(encode(x)) reconstructs x in x's own space, as SAELens's layer_norm SAEs do;
    decode_normalized keeps the working space."""
    sae = make_sae(activation, input_normalization=normalization).eval()
    x = torch.randn(3, 5, 16) * 4 + 2
    with torch.no_grad():
        out = sae(x)
        acts = sae.encode(x)
        x_hat = sae.decode(acts)
        x_hat_n = sae.decode_normalized(acts)
        x_n, mean, std = sae.normalize_input(x)
    assert torch.equal(acts, out.feature_acts)
    assert x_hat.shape == x.shape
    torch.testing.assert_close(x_hat, out.reconstruction, rtol=0, atol=1e-5)
    torch.testing.assert_close(x_hat_n, acts @ sae.W_dec + sae.b_dec, rtol=0, atol=0)
    torch.testing.assert_close(x_hat, x_hat_n * std + mean, rtol=0, atol=0)
    if normalization == "none":
        assert torch.equal(x_hat, x_hat_n)
        return
    # far from x's space: the working space is standardized per token
    assert (x_hat - x_hat_n).abs().max() > 1
    # another encode replaces what decode maps back with
    y = torch.randn(3, 5, 16) * 9 - 4
    with torch.no_grad():
        y_hat = sae.decode(sae.encode(y))
    torch.testing.assert_close(y_hat, sae(y).reconstruction, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match=r"decode got features for \(2,\) tokens"):
        sae.decode(torch.zeros(2, 64))
    fresh = make_sae(activation, input_normalization=normalization)
    with pytest.raises(ValueError, match="has encoded nothing yet; call encode"):
        fresh.decode(torch.zeros(2, 64))
    assert fresh.decode_normalized(torch.zeros(2, 64)).shape == (2, 16)


def test_batchtopk_uses_learned_threshold_in_eval():
    sae = make_sae("batchtopk", k=4)
    assert sae.threshold[0] < 0
    sae.train()
    sae(torch.randn(32, 16))
    assert sae.threshold[0] > 0
    sae.eval()
    x = torch.randn(5, 16)
    pre = sae.pre_activations(x)
    assert torch.equal(sae.encode(x), pre * (pre > sae.threshold))


def test_decoder_geometry_helpers():
    sae = make_sae("topafa")
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(64, 1) * 3 + 0.1)
    sae.set_decoder_norm_to_unit_norm()
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(64), atol=1e-6)
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_gradient_parallel_to_decoder_directions()
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(-1), torch.zeros(64), atol=1e-5)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_save_load_round_trip(tmp_path, activation):
    sae = make_sae(activation, base_model="some/model", layer=4, hook_point="resid_post")
    sae.eval()
    if activation == "batchtopk":
        sae.train()
        sae(torch.randn(16, 16))
        sae.eval()
    sae.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    x = torch.randn(7, 16)
    for loader in (SparseAutoencoder.from_pretrained, AutoModel.from_pretrained):
        loaded = loader(tmp_path)
        loaded.eval()
        assert isinstance(loaded, SparseAutoencoder)
        assert loaded.config.layer == 4 and loaded.config.base_model == "some/model"
        for name, tensor in sae.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], tensor), name
        assert torch.equal(loaded(x).reconstruction, sae(x).reconstruction)


def test_bad_inputs_raise_clear_errors():
    sae = make_sae("topafa")
    with pytest.raises(ValueError, match="last dimension d_in=16"):
        sae(torch.randn(3, 15))
    with pytest.raises(ValueError, match="NaN or inf"):
        sae(torch.tensor([[float("nan")] * 16]))
    with pytest.raises(ValueError, match="NaN or inf"):
        sae.encode(torch.full((2, 16), float("inf")))
    with pytest.raises(ValueError, match="d_sae=64"):
        sae.decode(torch.randn(2, 63))


def test_loading_malformed_folders(tmp_path):
    sae = make_sae("topafa")
    good = tmp_path / "good"
    sae.save_pretrained(good)

    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        SparseAutoencoder.from_pretrained(tmp_path)

    broken = tmp_path / "broken_config"
    sae.save_pretrained(broken)
    (broken / "config.json").write_text('{"d_in": 16, "d_sae": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        SparseAutoencoder.from_pretrained(broken)

    truncated = tmp_path / "truncated"
    sae.save_pretrained(truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        AutoModel.from_pretrained(truncated)

    garbage = tmp_path / "garbage"
    sae.save_pretrained(garbage)
    (garbage / "model.safetensors").write_bytes(b"\x05")
    with pytest.raises(ValueError, match="truncated or not a safetensors file"):
        SparseAutoencoder.from_pretrained(garbage)

    mismatch = tmp_path / "mismatch"
    sae.save_pretrained(mismatch)
    config = json.loads((mismatch / "config.json").read_text())
    config["d_sae"] = 32
    (mismatch / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"W_enc has shape \[16, 64\] but config.json says \[16, 32\]"
    ):
        SparseAutoencoder.from_pretrained(mismatch)

    missing = tmp_path / "missing_tensor"
    sae.save_pretrained(missing)
    save_file({"W_enc": sae.W_enc.detach().clone()}, str(missing / "model.safetensors"))
    with pytest.raises(ValueError, match="lacks the tensor 'W_dec'"):
        SparseAutoencoder.from_pretrained(missing)

    wrong_type = tmp_path / "wrong_type"
    sae.save_pretrained(wrong_type)
    config = json.loads((wrong_type / "config.json").read_text())
    config["model_type"] = "llama"
    (wrong_type / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type='llama'"):
        SparseAutoencoder.from_pretrained(wrong_type)

    invalid = tmp_path / "invalid_value"
    sae.save_pretrained(invalid)
    config = json.loads((invalid / "config.json").read_text())
    config["activation"] = "softmax"
    (invalid / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="activation must be one of"):
        SparseAutoencoder.from_pretrained(invalid)


def test_topafa_k_by_hand(worked_topafa_sae):
    # Target ||x - b_dec||; contributions (pre_i * ||W_dec,i||)^2 ranked, k = the prefix whose
    # norm is nearest the target:
    #   x - b = (3, 4):  pre (4, 3, 1, .5), prefix norms 4, 5, 5.10, 5.12, target 5  -> k = 2
    #   x - b = (0, 2):  pre (2, 0, 0, .25), prefix norms 2, 2.016, ...,   target 2  -> k = 1
    #   x - b = (-3, 4): pre (4, 0, 0, .5), prefix norms 4, 4.03, ...,     target 5  -> k = 2
    # (a target of ||x|| instead would give k = 4, 2 and 2; an off-by-one, 1 or 3 on row one)
    sae = worked_topafa_sae
    x = torch.tensor([[3.0, 5.0], [0.0, 3.0], [-3.0, 5.0]])
    out = sae(x)
    assert out.k.tolist() == [2, 1, 2]
    expected = torch.tensor([[4.0, 3.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.5]])
    torch.testing.assert_close(out.feature_acts, expected)
    assert out.l0.tolist() == [2.0, 1.0, 2.0]
    # x_hat = f W_dec + b_dec
    torch.testing.assert_close(
        out.reconstruction, torch.tensor([[3.0, 5.0], [0.0, 3.0], [0.0, 5.5]])
    )


@pytest.mark.parametrize("activation", ["topk", "noise_batch", "relu"])
@pytest.mark.parametrize("convention", ["paper", "hf_topafa_v0.1"])
def test_matryoshka_prefixes_each_reconstruct_alone(activation, convention):
    sae = make_sae(activation, matryoshka_levels=2, loss_convention=convention,
                   input_normalization="none")  # fmt: skip
    assert sae.config.matryoshka_prefixes == [16, 32]
    x = torch.randn(40, 16) * 3
    out = sae(x)
    acts = out.feature_acts
    inner = []
    for m in (16, 32):
        error = (acts[:, :m] @ sae.W_dec[:m] + sae.b_dec - x).pow(2)
        inner.append(error.mean() / x.pow(2).mean() if convention == "paper"
                     else error.sum() / x.pow(2).sum())  # fmt: skip
    assert torch.allclose(out.matryoshka_loss, torch.stack(inner).mean(), rtol=1e-5)
    recon = (out.mse_loss + 2 * out.matryoshka_loss) / 3
    expected = recon + sae.config.afa_coef * out.afa_loss + out.sparsity_loss
    assert torch.allclose(out.loss, expected, rtol=1e-5)
    # the prefixes are asked to reconstruct alone: the first features' decoder rows get a
    # gradient the plain loss would not give them
    plain = make_sae(activation, loss_convention=convention, input_normalization="none")
    plain.load_state_dict(sae.state_dict())
    out.loss.backward()
    plain(x).loss.backward()
    assert not torch.allclose(sae.W_dec.grad[:16], plain.W_dec.grad[:16])
    assert make_sae(activation).config.matryoshka_levels == 0  # off by default
    assert make_sae(activation)(x).matryoshka_loss is None


def test_matryoshka_levels_are_validated():
    with pytest.raises(ValueError, match="halves d_sae=64 below one feature; at most 6"):
        make_sae("topk", matryoshka_levels=7)
    with pytest.raises(ValueError, match="matryoshka_levels must be an integer >= 0"):
        make_sae("topk", matryoshka_levels=-1)
