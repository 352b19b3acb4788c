import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from hf_topafa import SAEConfig, SparseAutoencoder
from hf_topafa.sae import afa


def test_scaled_feature_acts_and_norm():
    f = torch.tensor([[1.0, 2.0, 0.0]])
    W_dec = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])  # row norms 5, 2, 1
    b_dec = torch.tensor([0.0, 3.0])
    scaled = afa.scaled_feature_acts(f, W_dec, b_dec)
    assert scaled.tolist() == [[5.0, 4.0, 0.0, 3.0]]
    assert afa.scaled_feature_norm(f, W_dec, b_dec).item() == pytest.approx(math.sqrt(50))
    assert afa.scaled_feature_norm(f, W_dec).item() == pytest.approx(math.sqrt(41))
    assert afa.afa_norm(torch.tensor([[3.0, 4.0]])).item() == 5.0


def test_epsilon_lbo_hand_computed():
    # ||z|| = 5, ||f~|| = 4, h = 11: |25 - 16| / (10 * 16) = 0.05625
    eps = afa.epsilon_lbo(torch.tensor([5.0]), torch.tensor([4.0]), h=11)
    assert eps.item() == pytest.approx(9 / 160)
    zero = afa.epsilon_lbo(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0]), h=3)
    assert zero.tolist() == [0.0, math.inf]
    with pytest.raises(ValueError, match="h must be at least 2"):
        afa.epsilon_lbo(torch.tensor([1.0]), torch.tensor([1.0]), h=1)


def test_bounds_and_classification():
    z = torch.tensor([2.0, 2.0, 2.0, 2.0])
    lower, upper = afa.zf_bounds(z, 0.5)
    assert lower[0].item() == pytest.approx(2 / math.sqrt(1.5))
    assert upper[0].item() == pytest.approx(2 / math.sqrt(0.5))
    f = torch.tensor([1.0, 2.0, 2.7, 3.0])  # 1.633 and 2.828 are the bounds
    assert afa.classify_tokens(z, f, 0.5).tolist() == [afa.UNDER, afa.WITHIN, afa.WITHIN, afa.OVER]
    _, inf_upper = afa.zf_bounds(z, 1.0)
    assert torch.isinf(inf_upper).all()
    assert afa.classify_tokens(z, torch.tensor([1.0, 9.0, 99.0, 2.0]), 1.0).tolist() == [
        afa.UNDER,
        afa.WITHIN,
        afa.WITHIN,
        afa.WITHIN,
    ]
    with pytest.raises(ValueError, match="positive"):
        afa.zf_bounds(z, 0.0)


@settings(max_examples=40, deadline=None)
@given(d=st.integers(4, 64), h=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_theorem_holds_for_quasi_orthogonal_codes(d, h, seed):
    """For unit directions with max |w_i . w_j| = eps, | ||z||^2 - ||f||^2 | <= eps (h-1) ||f||^2."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(h, d, generator=g, dtype=torch.float64)
    w /= w.norm(dim=-1, keepdim=True)
    f = torch.randn(h, generator=g, dtype=torch.float64)
    z = f @ w
    cos = (w @ w.T).abs()
    cos.fill_diagonal_(0)
    eps = cos.max().item()
    z_norm, f_norm = afa.afa_norm(z), f.norm()
    assert abs(z_norm**2 - f_norm**2) <= eps * (h - 1) * f_norm**2 + 1e-9
    # eps_lbo is the smallest eps consistent with the token, so it never exceeds the true eps
    assert afa.epsilon_lbo(z_norm, f_norm, h).item() <= eps + 1e-9
    lower, upper = afa.zf_bounds(z_norm, eps * (h - 1) if eps * (h - 1) > 0 else 1e-12)
    assert lower - 1e-9 <= f_norm <= upper + 1e-9


def test_quasi_orthogonality_blocked_matches_dense():
    torch.manual_seed(0)
    W = torch.randn(300, 16)
    unit = W / W.norm(dim=-1, keepdim=True)
    cos = (unit @ unit.T).abs()
    cos.fill_diagonal_(0)
    stats = afa.decoder_quasi_orthogonality(W, block_size=64)
    assert stats["max_abs_cos"] == pytest.approx(cos.max().item(), rel=1e-5)
    assert stats["mean_abs_cos"] == pytest.approx(cos.sum().item() / (300 * 299), rel=1e-5)


def test_quasi_orthogonality_at_65536_rows_without_the_full_matrix():
    W = torch.randn(65536, 8)
    stats = afa.decoder_quasi_orthogonality(W, block_size=2048)  # a block is 2048 x 65536 floats
    assert 0.99 < stats["max_abs_cos"] <= 1.0 + 1e-5  # with d=8, some pair is almost parallel
    assert 0.2 < stats["mean_abs_cos"] < 0.4  # E|cos| for random directions in 8-d is about 0.27


def test_zf_diagnostics_agree_with_the_parts():
    torch.manual_seed(1)
    sae = SparseAutoencoder(SAEConfig(d_in=12, d_sae=48, activation="topafa"))
    x = torch.randn(3, 7, 12) * 4
    diag = afa.zf_diagnostics(sae, x)
    acts = sae.encode(x).reshape(-1, 48)
    z_norm = x.reshape(-1, 12).norm(dim=-1)
    f_norm = afa.scaled_feature_norm(acts, sae.W_dec, sae.b_dec)
    assert torch.allclose(diag["z_norm"], z_norm)
    assert torch.allclose(diag["f_norm"], f_norm)
    assert torch.allclose(diag["eps_lbo"], afa.epsilon_lbo(z_norm, f_norm, 49))
    assert diag["k"].shape == (21,) and (diag["k"] >= 1).all()
    for band in afa.EPS_H_BANDS:
        assert torch.equal(diag[f"class_{band}"], afa.classify_tokens(z_norm, f_norm, band))


def test_zf_diagnostics_by_hand(worked_topafa_sae):
    # The worked top-AFA SAE of conftest (no input normalization, so z = x):
    #   x = (3, 5):  f = (4, 3, 0, 0),  ||f~||^2 = 16 + 9 + ||b_dec||^2 = 26,   ||z||^2 = 34
    #   x = (0, 3):  f = (2, 0, 0, 0),  ||f~||^2 = 4 + 1 = 5,                   ||z||^2 = 9
    #   x = (-3, 5): f = (4, 0, 0, .5), ||f~||^2 = 16 + .25 + 1 = 17.25,        ||z||^2 = 34
    # h = 5; eps_LBO = | ||z||^2 - ||f~||^2 | / (4 ||f~||^2); every token is under-activated
    # at eps (h-1) = 0.25, since ||z||^2 / ||f~||^2 - 1 = 0.31, 0.8 and 0.97 all exceed it.
    sae = worked_topafa_sae
    x = torch.tensor([[3.0, 5.0], [0.0, 3.0], [-3.0, 5.0]])
    diag = afa.zf_diagnostics(sae, x)
    assert diag["z_norm"].tolist() == pytest.approx([34**0.5, 3.0, 34**0.5])
    assert diag["f_norm"].tolist() == pytest.approx([26**0.5, 5**0.5, 17.25**0.5])
    assert diag["eps_lbo"].tolist() == pytest.approx([8 / 104, 4 / 20, 16.75 / 69])
    assert diag["l0"].tolist() == [2.0, 1.0, 2.0] and diag["k"].tolist() == [2, 1, 2]
    assert diag["class_0.25"].tolist() == [afa.UNDER] * 3
    assert diag["class_0.5"].tolist() == [afa.WITHIN, afa.UNDER, afa.UNDER]
    assert diag["class_1.0"].tolist() == [afa.WITHIN] * 3
    # the same numbers from an output the caller already has (one SAE run, as the Space does)
    again = afa.zf_diagnostics(sae, x, sae(x))
    assert all(torch.equal(again[key], diag[key]) for key in diag)


def test_space_quantile_by_hand():
    values = torch.tensor([4.0, 1.0, 3.0, 2.0])  # sorted 1, 2, 3, 4: position q * 3
    assert afa.quantile(values, 0.5) == pytest.approx(2.5)
    assert afa.quantile(values, 0.25) == pytest.approx(1.75)
    assert math.isnan(afa.quantile(torch.tensor([]), 0.5))


def test_zf_diagnostics_are_in_the_inputs_own_scale():
    # With the paper's standardization every token's working-space ||x_n|| is sqrt(d_in - 1), so
    # a ZF plot in that space is one vertical stripe. The diagnostics multiply ||z|| and ||f~||
    # back by each token's scale (std + 1e-5): ||z|| becomes ||x - mean||, and the tokens spread.
    torch.manual_seed(2)
    config = SAEConfig(d_in=16, d_sae=64, activation="topafa", input_normalization="layer_norm")
    sae = SparseAutoencoder(config)
    with torch.no_grad():
        sae.b_dec.normal_()
    x = torch.randn(40, 16) * torch.linspace(0.5, 20.0, 40)[:, None] + 3.0
    diag = afa.zf_diagnostics(sae, x)
    x_n, mean, std = sae.normalize_input(x)
    scale = (std + 1e-5).squeeze(-1)
    z_work = x_n.norm(dim=-1)
    f_work = afa.scaled_feature_norm(sae.encode(x), sae.W_dec, sae.b_dec)
    assert torch.allclose(z_work, torch.full_like(z_work, 15**0.5), rtol=1e-4)  # the stripe
    assert torch.allclose(diag["z_norm"], (x - mean).norm(dim=-1), rtol=1e-5)
    assert torch.allclose(diag["f_norm"], f_work * scale, rtol=1e-5)
    assert torch.allclose(diag["scale"], scale)
    assert diag["z_norm"].max() > 10 * diag["z_norm"].min()  # spread along the diagonal
    # eps_LBO and the over/under classes are scale-free: exactly the working space's
    assert torch.equal(diag["eps_lbo"], afa.epsilon_lbo(z_work, f_work, 65))
    for band in afa.EPS_H_BANDS:
        assert torch.equal(diag[f"class_{band}"], afa.classify_tokens(z_work, f_work, band))
    # An SAE without input normalization is already in the input's scale.
    plain = SparseAutoencoder(SAEConfig(d_in=16, d_sae=64, activation="topafa"))
    assert torch.equal(afa.zf_diagnostics(plain, x)["scale"], torch.ones(40))
