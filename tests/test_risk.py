"""The risk inflation criterion's two noise levels (hf_topafa.sae.risk) and the rule that
prices every token's latents at one pooled level (risk_pooled)."""

import math

import pytest
import torch

from hf_topafa import SAEConfig, SparseAutoencoder
from hf_topafa.sae import risk


def test_known_noise_counts_take_the_minimum_of_the_criterion():
    rss = torch.tensor([[10.0, 4.0, 3.9, 3.8]], dtype=torch.float64)
    h = math.e  # one feature costs 2 ln h = 2 noise units
    assert risk.known_noise_counts(rss, h, 1.0).item() == 1  # 10, 6, 7.9, 9.8
    assert risk.known_noise_counts(rss, h, 0.01).item() == 3  # 1000, 402, 394, 386
    assert risk.known_noise_counts(rss, h, 1000.0).item() == 0


def orthonormal_world(tokens=400, d=256, noise=0.1, seed=0):
    """Tokens of 1-10 features of an orthonormal dictionary (magnitudes 3-5) plus isotropic
    noise, read by the perfect encoder: (pre, W_dec, z, true counts)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.linalg.qr(torch.randn(d, d, generator=g))[0].T.contiguous()
    counts = torch.randint(1, 11, (tokens,), generator=g)
    codes = torch.zeros(tokens, d)
    for t, n in enumerate(counts.tolist()):
        chosen = torch.randperm(d, generator=g)[:n]
        codes[t, chosen] = 3 + 2 * torch.rand(n, generator=g)
    z = codes @ W + noise * torch.randn(tokens, d, generator=g)
    return torch.relu(z @ W.T), W, z, counts


def test_pooled_counts_recover_each_tokens_features_and_the_noise_level():
    pre, W, z, counts = orthonormal_world()
    acts, k, level = risk.risk_pooled(pre, W, z)
    assert torch.equal(k, (acts != 0).sum(-1))
    assert (k >= counts).all()  # every feature stands far above the noise
    # a noise draw is kept where it clears the price 2 ln h sigma^2: the largest of about 128
    # positive chi-square draws does so for about 1 token in 8
    assert (k > counts).float().mean() < 0.2
    assert level.item() == pytest.approx(0.1**2, rel=0.1)
    _, at_known, _ = risk.risk_pooled(pre, W, z, sigma2=0.01)
    assert (at_known - k).abs().float().mean() < 0.05


def test_one_pooled_level_keeps_no_leftover_under_it_where_the_per_token_level_does():
    # half the tokens: one feature, nearly no noise, and three small leftovers along other rows;
    # the other half: one feature in noise that sets the pooled level above the leftovers'
    d, tokens = 256, 200
    W = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1)))[0].T
    W = W.contiguous()
    g = torch.Generator().manual_seed(2)
    codes = torch.zeros(tokens, d)
    codes[:, 0] = 4.0
    quiet = torch.arange(tokens) < tokens // 2
    codes[quiet, 1:4] = 0.3
    noise = torch.where(quiet, 0.01, 0.2).unsqueeze(-1) * torch.randn(tokens, d, generator=g)
    z = codes @ W + noise
    pre = torch.relu(z @ W.T)
    _, per_token = risk.risk_inflation(pre, W, z)
    _, pooled, _ = risk.risk_pooled(pre, W, z)
    assert (per_token[quiet] >= 4).all()  # the leftovers shave a small residual: all kept
    assert (pooled[quiet] == 1).float().mean() > 0.9  # at the pooled level they are noise
    # the price of one level: tokens noisier than the pool are under-priced and keep noise
    # draws their own level would refuse
    assert (per_token[~quiet] == 1).float().mean() > 0.8
    assert (pooled[~quiet] > per_token[~quiet]).float().mean() > 0.5


def test_the_rule_learns_its_level_while_training_and_reads_with_it_fixed():
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=16, d_sae=64, activation="risk_pooled"))
    assert sae.threshold[0].item() == -1.0  # not estimated
    x = torch.randn(256, 16)
    sae.eval()
    from_batch = sae(x).feature_acts
    sae.train()
    sae(x)
    level = sae.threshold[0].item()
    assert level > 0
    sae.eval()
    assert torch.equal(sae(x).feature_acts, from_batch)  # one batch: the same level
    sae.threshold.fill_(1e6)  # every leftover is noise: each token keeps its largest only
    assert ((sae(x).feature_acts != 0).sum(-1) <= 1).all()
    sae.threshold.fill_(1e-9)
    assert (sae(x).feature_acts != 0).sum(-1).float().mean() > 3


def test_the_floor_drops_a_kept_latent_that_does_not_pay_its_price_alone():
    # one token whose third latent's activation (0.3) reads less than its row holds (1.0): the
    # count reaches it, since it shaves the residual by 0.51, but alone 0.3^2 is under the price
    d = 64
    W = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(3)))[0].T
    W = W.contiguous()
    z = (6.0 * W[0] + 0.6 * W[1] + 1.0 * W[2]).unsqueeze(0)
    pre = torch.zeros(1, d)
    pre[0, 0], pre[0, 1], pre[0, 2] = 6.0, 0.6, 0.3
    sigma2 = 0.3 / (2 * math.log(d))  # the price: 0.6^2 pays it, 0.3^2 does not
    _, counted, _ = risk.risk_pooled(pre, W, z, sigma2=sigma2)
    acts, paid, _ = risk.risk_pooled(pre, W, z, sigma2=sigma2, floor=True)
    assert counted.item() == 3
    assert paid.item() == 2 and acts[0, 2] == 0 and acts[0, 1] == pytest.approx(0.6)
    orthonormal = risk.risk_pooled(*orthonormal_world()[:3], floor=True)[1]
    assert torch.equal(orthonormal, risk.risk_pooled(*orthonormal_world()[:3])[1])
