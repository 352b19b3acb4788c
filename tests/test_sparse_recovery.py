"""What a decoder can recover on a perfect dictionary (hf_topafa.evaluation.sparse_recovery):
the universal price, the lasso and the orthogonal pursuit, each against a closed form."""

import math

import pytest
import torch

from hf_topafa.evaluation import sparse_recovery as rec


def test_the_price_and_the_noise_the_width_leaves():
    codes = torch.tensor([[3.0, 0.0, 2.0, 1.0], [0.0, 4.0, 0.0, 2.0]])
    held = torch.tensor([True, True, False, False])
    # unheld energy per sample: 4 + 1 = 5 and 4; pooled over 2 samples in d = 3 dimensions
    assert rec.unheld_noise(codes, held, 3) == pytest.approx(4.5 / 3)
    assert rec.universal_price(2, 1.5) == pytest.approx(2 * math.log(2) * 1.5)
    price = rec.universal_price(2, 4.0)  # 5.55: 3^2 and 4^2 clear it, an inactive one never
    assert price == pytest.approx(5.545, abs=1e-3)
    assert rec.clearing_price(codes, held, 4.0).tolist() == [1, 1]
    assert rec.clearing_price(codes, held, 10.0).tolist() == [0, 1]  # price 13.9: only 4^2


def test_the_lasso_on_orthogonal_rows_is_a_soft_threshold_per_unit_of_row_norm():
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(6, 6, generator=g))[0].T
    norms = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.5])
    W = q * norms.unsqueeze(-1)
    z = torch.randn(5, 6, generator=g) * 3
    level = 0.8
    f = rec.nonnegative_lasso(W, z, level, iterations=2000)
    # per row: 1/2 n^2 (f - p)^2 + level n f, p = <z, w> / n^2, so f = max(0, p - level / n)
    expected = torch.relu((z @ W.T) / norms**2 - level / norms)
    assert torch.allclose(f, expected, atol=1e-4)
    assert (f == 0).any() and (f > 0).any()  # the threshold cuts some rows and keeps others


def test_the_pursuit_finds_an_exact_sparse_code_and_its_residual_falls_to_zero():
    g = torch.Generator().manual_seed(1)
    W = torch.nn.functional.normalize(torch.randn(128, 64, generator=g), dim=-1)
    support = torch.tensor([[3, 40, 77], [5, 6, 120]])
    codes = torch.zeros(2, 128)
    codes.scatter_(1, support, torch.tensor([[4.0, 3.0, 5.0], [2.0, 5.0, 3.5]]))
    z = codes @ W
    rss, chosen = rec.pursuit_path(W, z, steps=4)
    for row in range(2):
        assert set(chosen[row, :3].tolist()) == set(support[row].tolist())
    assert (rss[:, 3] < 1e-8).all() and (rss[:, 0] == z.double().pow(2).sum(-1)).all()
    assert (rss[:, 1:4].diff(dim=1) <= 1e-12).all()  # least squares on more rows never fits worse
    assert (chosen[:, 3:4] != chosen[:, :3]).all()  # a row is chosen once
