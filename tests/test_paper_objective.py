"""The paper's objective, conventions and defaults, checked against an independent re-statement.

The re-statement follows the published code (SewoongLee/top-afa-sae, training/sae.py) line by
line in plain torch, with none of this package's helpers: standardize per token, encode without
a bias, select, decode, and compute l2 + afa (+ aux) as the paper does.
"""

import json

import pytest
import torch

from hf_topafa import SAEConfig, SparseAutoencoder
from hf_topafa.training.train import TrainConfig


def paper_forward(W_enc, W_dec, b_dec, x, rule, k=None, afa_coeff=0.0):
    """The published forward and loss (aux term off), for rule in topafa / topk / batchtopk."""
    x_mean = x.mean(dim=-1, keepdim=True)
    x = x - x_mean
    x_std = x.std(dim=-1, keepdim=True)
    x = x / (x_std + 1e-5)
    x_cent = x - b_dec
    acts = torch.relu(x_cent @ W_enc)
    if rule == "topk":
        top = torch.topk(acts, k, dim=-1)
        acts_topk = torch.zeros_like(acts).scatter(-1, top.indices, top.values)
    elif rule == "batchtopk":
        top = torch.topk(acts.flatten(), k * x.shape[0], dim=-1)
        acts_topk = torch.zeros_like(acts.flatten()).scatter(-1, top.indices, top.values)
        acts_topk = acts_topk.reshape(acts.shape)
    else:
        afa = torch.norm(x_cent, p=2, dim=1, keepdim=True)
        scaled = (acts * torch.norm(W_dec, p=2, dim=-1)).pow(2)
        order = torch.argsort(scaled, dim=-1, descending=True)
        cumulative = torch.cumsum(torch.gather(scaled, -1, order), dim=-1)
        cumulative[..., -1] = 1e8
        kk = torch.abs(cumulative.sqrt() - afa).argmin(dim=-1) + 1
        rank_mask = torch.arange(acts.shape[1]).unsqueeze(0) < kk.unsqueeze(1)
        mask = torch.zeros_like(acts, dtype=torch.bool).scatter_(1, order, rank_mask)
        acts_topk = acts * mask
    x_reconstruct = acts_topk @ W_dec + b_dec
    l2_loss = (x_reconstruct - x).pow(2).mean()
    afa_loss = afa_coeff * torch.mean((acts_topk.norm(dim=-1) - x.norm(dim=-1)).pow(2))
    return l2_loss + afa_loss, acts_topk, x_reconstruct * x_std + x_mean


def paper_init(d_in, d_sae, seed):
    torch.manual_seed(seed)
    W_enc = torch.nn.init.kaiming_uniform_(torch.empty(d_in, d_sae))
    W_dec = W_enc.t().clone()
    return W_enc, W_dec / W_dec.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize(
    "rule, k, lam",
    [("topafa", None, 1 / 32), ("topafa", None, 1 / 128), ("topk", 8, 0.0), ("topk", 8, 1 / 16),
     ("batchtopk", 8, 0.0)],
)  # fmt: skip
def test_loss_equals_the_published_formula(rule, k, lam):
    d_in, d_sae = 48, 192
    # float64, so that top-AFA's nearest cumulative norm is not decided by float32 rounding
    W_enc, W_dec = (w.double() for w in paper_init(d_in, d_sae, seed=3))
    b_dec = torch.randn(d_in, dtype=torch.float64) * 0.1  # trained b_dec is not zero
    x = torch.randn(64, d_in, dtype=torch.float64) * 4 + 1.5  # raw: the SAE standardizes it
    cfg = SAEConfig(
        d_in=d_in, d_sae=d_sae, activation=rule, k=k, afa_coef=lam, aux_coef=0.0,
        input_normalization="layer_norm",
    )  # fmt: skip
    sae = SparseAutoencoder(cfg).double()
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(b_dec)
    sae.train()
    out = sae(x)
    expected, acts, recon = paper_forward(W_enc, W_dec, b_dec, x, rule, k, lam)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert torch.allclose(out.feature_acts, acts, atol=1e-10)
    assert torch.allclose(out.reconstruction, recon, atol=1e-8)
    if lam:
        assert out.afa_loss.item() > 0  # the norm term is really in the total


def test_lambda_weighs_the_norm_term_as_in_the_paper():
    """On standardized inputs a d_in factor separated 0.1's units from the paper's: not any more."""
    sae = SparseAutoencoder(
        SAEConfig(d_in=64, d_sae=256, activation="topk", k=4, input_normalization="layer_norm")
    )
    x = torch.randn(32, 64)
    out = sae(x)
    x_n = (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-5)
    per_token = (out.feature_acts.norm(dim=-1) - x_n.norm(dim=-1)).pow(2).mean()
    assert out.afa_loss.item() == pytest.approx(per_token.item(), rel=1e-5)
    old = SparseAutoencoder(
        SAEConfig(
            d_in=64,
            d_sae=256,
            activation="topk",
            k=4,
            input_normalization="layer_norm",
            loss_convention="hf_topafa_v0.1",
        )  # fmt: skip
    )
    old.load_state_dict(sae.state_dict())
    ratio = out.afa_loss / old(x).afa_loss  # ~d_in - 1: the factor the old units lost
    assert 55 < ratio.item() < 70


def test_kaiming_init_as_published():
    d_in, d_sae = 64, 512
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=d_sae))
    sae.reset_parameters(seed=7)
    W_enc, W_dec = paper_init(d_in, d_sae, seed=7)  # the same generator stream
    assert torch.allclose(sae.W_enc, W_enc)
    assert torch.allclose(sae.W_dec, W_dec)
    bound = (6 / d_sae) ** 0.5  # kaiming-uniform, fan_in = d_sae for an [d_in, d_sae] tensor
    assert sae.W_enc.abs().max() <= bound
    assert sae.W_enc.norm(dim=0).mean().item() == pytest.approx((2 * d_in / d_sae) ** 0.5, rel=0.05)
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(d_sae))
    assert sae.b_dec.abs().sum() == 0 and sae.b_enc.abs().sum() == 0
    tied = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=d_sae, init="unit_tied"))
    assert torch.allclose(tied.W_enc.norm(dim=0), torch.ones(d_sae))  # 0.1's unit columns


def test_encoder_bias_switch():
    assert not SAEConfig(activation="topafa").encoder_bias
    assert not SAEConfig(activation="topk", k=4).encoder_bias
    assert SAEConfig(activation="relu").encoder_bias
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=32, activation="topk", k=4, encoder_bias=True))
    sae(torch.randn(5, 8)).loss.backward()
    assert sae.b_enc.grad is not None
    with pytest.raises(ValueError, match="encoder_bias"):
        SAEConfig(encoder_bias="yes")
    with pytest.raises(ValueError, match="loss_convention"):
        SAEConfig(loss_convention="sum")
    with pytest.raises(ValueError, match="init"):
        SAEConfig(init="xavier")


def test_a_config_saved_by_version_0_1_keeps_its_meaning(tmp_path):
    """config.json without the new fields: the 0.1 standardization, loss and trained b_enc."""
    sae = SparseAutoencoder(
        SAEConfig(d_in=16, d_sae=64, activation="topk", k=4, input_normalization="layer_norm")
    )
    sae.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    for key in ("loss_convention", "encoder_bias", "init"):
        raw.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    old = SparseAutoencoder.from_pretrained(tmp_path)
    assert old.config.loss_convention == "hf_topafa_v0.1"
    assert old.config.input_normalization == "layer_norm_biased"
    assert old.config.encoder_bias is True
    x = torch.randn(4, 16) * 3 + 1
    mean, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True, unbiased=False)
    assert torch.allclose(old.normalize_input(x)[0], (x - mean) / std, atol=1e-6)
    # a config saved now round-trips with its own values
    sae.save_pretrained(tmp_path / "new")
    new = SparseAutoencoder.from_pretrained(tmp_path / "new")
    assert new.config.loss_convention == "paper" and new.config.input_normalization == "layer_norm"


def test_training_defaults_are_the_papers():
    cfg = TrainConfig()
    assert cfg.sae.input_normalization == "layer_norm"
    assert cfg.sae.loss_convention == "paper"
    assert cfg.sae.init == "kaiming" and cfg.optim.decoder_bias_init == "zeros"
    assert cfg.sae.encoder_bias is None  # resolved per rule: none for topafa / topk / batchtopk
    assert cfg.optim.warmup_fraction == 0 and cfg.optim.decay_fraction == 0  # constant lr
    assert (cfg.optim.lr, cfg.optim.adam_beta1, cfg.optim.adam_beta2, cfg.optim.adam_eps) == (
        3e-4,
        0.9,
        0.99,
        1e-8,
    )
    assert cfg.optim.max_grad_norm == 1e5
    assert cfg.sae.afa_coef == 1 / 32 and cfg.sae.aux_coef == 1 / 32 and cfg.sae.aux_k == 512
    assert cfg.resolved_dead_threshold() == 5 * cfg.optim.batch_size  # n_batches_to_dead = 5
