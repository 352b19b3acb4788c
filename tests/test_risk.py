"""The risk inflation criterion's two noise levels (hf_topafa.sae.risk), the rule that prices
every token's latents at one pooled level (risk_pooled), and the re-fit readers' prices
(hf_topafa.sae.balance too)."""

import math

import pytest
import torch

from hf_topafa import SAEConfig, SparseAutoencoder
from hf_topafa.sae import balance, risk


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


def understated_world(tokens=256, d=256, h=1024, n=12, seed=4):
    """Tokens of ``n`` random unit features (magnitudes near 5) plus noise 0.1, read by an
    encoder that understates every amplitude by half, as a crowded world's encoder does:
    (pre, W_dec, z, true codes)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.nn.functional.normalize(torch.randn(h, d, generator=g), dim=-1)
    codes = torch.zeros(tokens, h)
    on = torch.rand(tokens, h, generator=g).argsort(-1)[:, :n]
    codes.scatter_(1, on, 5 + 0.5 * torch.randn(tokens, n, generator=g))
    z = codes @ W + 0.1 * torch.randn(tokens, d, generator=g)
    return 0.5 * torch.relu(z @ W.T), W, z, codes


def test_the_refit_reads_the_amplitudes_the_encoder_understates():
    pre, W, z, codes = understated_world()
    _, floor_k, _ = risk.risk_pooled(pre, W, z, floor=True)
    acts, k, level = risk.risk_refit(pre, W, z)
    assert floor_k.float().mean() < 10  # priced at the encoder's half amplitudes, features drop
    assert torch.equal(k, (acts != 0).sum(-1))
    exact = ((acts != 0) == (codes != 0)).all(-1)
    assert exact.float().mean() > 0.9  # the true set, token by token
    found = (acts != 0) & exact.unsqueeze(-1)
    errors = (acts[found] - codes[found]).abs()  # the encoder's are off by about 2.5
    assert errors.median() < 0.15 and errors.max() < 0.6
    assert level.item() == pytest.approx(0.1**2, rel=0.3)
    _, at_known, used = risk.risk_refit(pre, W, z, sigma2=level.item())
    assert torch.equal(at_known, k) and used.item() == level.item()


def test_elimination_drops_what_raises_the_residual_less_than_its_price():
    d = 64
    W = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(5)))[0].T
    W = W.contiguous()
    z = (3.0 * W[0] + 1.0 * W[1]).unsqueeze(0)  # removing W[1] raises the residual by 1
    pre = torch.zeros(1, d)
    pre[0, 0], pre[0, 1], pre[0, 2] = 1.0, 0.5, 0.4  # W[2]'s least-squares amplitude is 0
    for price, kept in ((0.5, 2), (2.0, 1), (10.0, 0)):
        amplitudes, residual = risk.refit_kept(pre, W, z, price)
        assert int((amplitudes != 0).sum()) == kept
        if kept:
            assert amplitudes[0, 0].item() == pytest.approx(3.0, abs=1e-5)
        assert residual.item() == pytest.approx([0.0, 1.0, 10.0][2 - kept], abs=1e-4)
    first = torch.tensor([1])  # only the largest activation may be re-fit: W[1] never enters
    amplitudes, residual = risk.refit_kept(pre, W, z, 0.5, first=first)
    assert int((amplitudes != 0).sum()) == 1 and amplitudes[0, 0].item() == pytest.approx(3.0)
    assert residual.item() == pytest.approx(1.0, abs=1e-4)


def test_the_calibrated_factor_is_where_on_and_off_are_equally_likely():
    for p, c in ((0.01, 200.0), (0.2, 30.0), (1 / 1024, 5.0)):
        price = risk.calibrated_factor(p, c)  # in units of sigma^2 = 1
        on = p * math.exp(-price / (2 * (1 + c))) / math.sqrt(1 + c)  # N(0, 1 + c) at sqrt(price)
        off = (1 - p) * math.exp(-price / 2)  # N(0, 1), the same constant left out
        assert on == pytest.approx(off, rel=1e-9)
    assert risk.calibrated_factor(0.001, 100.0) > risk.calibrated_factor(0.1, 100.0)
    assert risk.calibrated_factor(0.0, 0.0) > 1e3  # nothing kept, no signal: past any contribution


def spike_world(on_per_token, tokens=512, d=256, noise=0.3, seed=6):
    """``on_per_token`` features of an orthonormal dictionary per token at amplitudes near 5,
    plus noise, read by the perfect encoder: (pre, W_dec, z, true codes)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.linalg.qr(torch.randn(d, d, generator=g))[0].T.contiguous()
    codes = torch.zeros(tokens, d)
    on = torch.rand(tokens, d, generator=g).argsort(-1)[:, :on_per_token]
    codes.scatter_(1, on, 5 + 0.5 * torch.randn(tokens, on_per_token, generator=g))
    z = codes @ W + noise * torch.randn(tokens, d, generator=g)
    return torch.relu(z @ W.T), W, z, codes


def test_the_calibrated_price_rises_in_a_sparse_world_and_falls_in_a_dense_one():
    ric = 2 * math.log(256)
    for on_per_token, above in ((2, True), (40, False)):
        pre, W, z, codes = spike_world(on_per_token)
        acts, k, price = risk.risk_calibrated(pre, W, z)
        factor = price.item() / 0.3**2
        assert (factor > ric) == above, (on_per_token, factor)  # sparse 15.4, dense 9.0
        assert torch.equal(k, (acts != 0).sum(-1))
        assert ((acts == 0) & (codes != 0)).sum() == 0  # no true feature missed
        false = ((acts != 0) & (codes == 0)).sum(-1).float().mean().item()
        assert false < 0.01 * on_per_token + 0.02  # sparse 0.014, dense 0.28 per token
        if above:  # at 2 ln h sigma^2 the sparse world's noise pays more often
            refit_acts = risk.risk_refit(pre, W, z)[0]
            assert false < ((refit_acts != 0) & (codes == 0)).sum(-1).float().mean().item()
        _, at_known, used = risk.risk_calibrated(pre, W, z, price=price.item())
        assert torch.equal(at_known, k) and used.item() == price.item()


def test_the_tail_probability_is_the_gaussian_chance_of_passing_the_risk_price():
    from scipy.stats import chi2

    for h in (64, 1024, 16384):
        ric = 2 * math.log(h)
        assert risk.tail_probability(h) == pytest.approx(chi2.sf(ric, df=1), rel=1e-9)
    assert risk.tail_probability(1024) == pytest.approx(1.97e-4, abs=0.01e-4)
    # the quantile tail_price reads: at h = 1,024 the tail holds 1.97e-4 of the values
    assert risk.tail_quantile(torch.arange(1.0, 10001.0), 1024) == 9999.0
    assert risk.tail_quantile(torch.tensor([3.0]), 1024) == 3.0


def test_the_tail_price_is_the_risk_price_under_gaussian_noise():
    pre, W, z, codes = spike_world(4, tokens=1024)
    price = risk.tail_price(pre, W, z)
    # measured 0.89: the few null latents that pass the price are kept, so leave the pool
    assert 0.8 < price / (2 * math.log(256) * 0.3**2) < 1.0
    acts, k, used = risk.risk_tail(pre, W, z)
    assert used.item() == price and torch.equal(k, (acts != 0).sum(-1))
    assert ((acts == 0) & (codes != 0)).sum() == 0  # no true feature missed


def world_with_unheld_spikes(tokens=1024, d=64, held=48, seed=3):
    """Two features per token from ``held`` orthonormal rows (the reader's dictionary) at
    amplitudes near 5, and in half the tokens one more feature at amplitude 5 in a random
    direction the dictionary does not hold, plus faint noise: a residual of sparse spikes, not
    Gaussian noise. (pre, W_dec, z, true codes over the held rows)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.linalg.qr(torch.randn(d, d, generator=g))[0].T[:held].contiguous()
    codes = torch.zeros(tokens, held)
    on = torch.rand(tokens, held, generator=g).argsort(-1)[:, :2]
    codes.scatter_(1, on, 5 + 0.5 * torch.randn(tokens, 2, generator=g))
    unheld = torch.nn.functional.normalize(torch.randn(tokens, d, generator=g), dim=-1)
    spikes = 5.0 * unheld * (torch.rand(tokens, 1, generator=g) < 0.5)
    z = codes @ W + spikes + 0.05 * torch.randn(tokens, d, generator=g)
    return torch.relu(z @ W.T), W, z, codes


def test_the_tail_price_rises_over_sparse_spikes_and_drops_the_latents_they_wake():
    pre, W, z, codes = world_with_unheld_spikes()
    tail_acts, _, price = risk.risk_tail(pre, W, z)
    refit_acts, _, level = risk.risk_refit(pre, W, z)
    assert price.item() > 2 * math.log(48) * level.item()  # heavier-tailed than Gaussian
    false = {name: ((acts != 0) & (codes == 0)).sum(-1).float().mean().item()
             for name, acts in (("tail", tail_acts), ("refit", refit_acts))}  # fmt: skip
    assert false["tail"] < 0.5 * false["refit"], false
    assert ((tail_acts == 0) & (codes != 0)).float().mean() < 0.01  # the true ones stay


def test_the_truncated_normal_fit_sees_under_the_cut_and_keeps_its_mean_positive():
    g = torch.Generator().manual_seed(1)
    values = 6.0 + 1.5 * torch.randn(20000, generator=g)
    mean, spread = balance.truncated_normal_fit(values[values > 5.0], 5.0)  # 75% cut away
    assert mean == pytest.approx(6.0, abs=0.15) and spread == pytest.approx(1.5, abs=0.1)
    assert values[values > 5.0].mean() > 6.5  # the moments of what is left would say otherwise
    falling = 4.0 + torch.empty(20000).exponential_(generator=g)  # no normal side: mean -> 0
    mean, spread = balance.truncated_normal_fit(falling, 4.0)
    assert 0.0 <= mean < 0.1 and spread > 1.0


def weak_spike_world(on_per_token, tokens=512, d=128, noise=0.3, seed=6):
    """As ``spike_world`` in 128 dimensions with amplitudes near 4 noise levels (1.2 +- 0.3 over
    noise 0.3): many true features fall under any price that keeps the noise out."""
    g = torch.Generator().manual_seed(seed)
    W = torch.linalg.qr(torch.randn(d, d, generator=g))[0].T.contiguous()
    codes = torch.zeros(tokens, d)
    on = torch.rand(tokens, d, generator=g).argsort(-1)[:, :on_per_token]
    codes.scatter_(1, on, (1.2 + 0.3 * torch.randn(tokens, on_per_token, generator=g)).abs())
    z = codes @ W + noise * torch.randn(tokens, d, generator=g)
    return torch.relu(z @ W.T), W, z, codes


def test_the_balance_price_trades_false_latents_for_missed_ones_where_amplitudes_are_weak():
    for on_per_token in (4, 12):
        pre, W, z, codes = weak_spike_world(on_per_token)
        calibrated = risk.calibrated_price(pre, W, z).price
        balanced = balance.balance_price(pre, W, z)
        assert balanced < calibrated  # measured 0.76 and 0.74 of it
        counts = {}
        for name, price in (("calibrated", calibrated), ("balance", balanced)):
            acts, k, _ = risk.risk_calibrated(pre, W, z, price=price)
            counts[name] = k.float().mean().item() / on_per_token
        assert counts["calibrated"] < counts["balance"] < 1.0, counts  # 0.65 < 0.79; 0.75 < 0.87
    pre, W, z, codes = spike_world(4)  # strong amplitudes: nothing to trade
    acts, k, _ = risk.risk_calibrated(pre, W, z, price=balance.balance_price(pre, W, z))
    assert ((acts != 0) != (codes != 0)).sum(-1).float().mean() < 0.01


def test_count_balance_equates_the_false_latents_passing_with_the_true_ones_under():
    null = torch.randn(200_000, generator=torch.Generator().manual_seed(0)).pow(2)  # chi2_1
    on_share, mean, spread = 0.02, 4.0, 1.5
    t = balance.count_balance(null, on_share, mean, spread)
    passing = float((null > t).double().mean())
    under = float(torch.distributions.Normal(mean, spread).cdf(torch.tensor(t).sqrt())
                  - torch.distributions.Normal(mean, spread).cdf(-torch.tensor(t).sqrt()))  # fmt: skip
    assert (1 - on_share) * passing == pytest.approx(on_share * under, rel=0.05)
    assert 2 < t < 16  # where a chi2_1 null thins out and the normal's lower side begins
    stronger = balance.count_balance(null, on_share, mean + 4, spread)
    assert stronger > t  # fewer true latents under any price: the balance moves up
    assert balance.count_balance(null, 0.2, mean, spread) < t  # more latents on: it moves down


def test_the_normal_misfit_is_small_for_one_normal_side_and_large_for_two_groups():
    g = torch.Generator().manual_seed(2)
    values = 6.0 + 1.5 * torch.randn(20000, generator=g)
    one = values[values > 5.0]
    mean, spread = balance.truncated_normal_fit(one, 5.0)
    assert balance.normal_misfit(one, 5.0, mean, spread) < 0.02
    # by hand: 1, 2 and 3 against a half normal (cut at 0), whose share under 1 is erf(1 / sqrt 2)
    # = 0.683 where the values' share just under 1 is 0: the largest gap
    misfit = balance.normal_misfit(torch.tensor([1.0, 2.0, 3.0]), 0.0, 0.0, 1.0)
    assert misfit == pytest.approx(math.erf(1 / math.sqrt(2)), abs=1e-9)
    # a sparse world's kept latents: false ones piled just above the cut, true ones far above
    pile = 4.0 + 0.8 * torch.empty(6000).exponential_(generator=g)
    far = 20.0 + 7.0 * torch.randn(6000, generator=g)
    two = torch.cat([pile, far[far > 4.0]])
    mean, spread = balance.truncated_normal_fit(two, 4.0)
    assert mean < 1.0  # the fit runs to its floor, as on the sparse worlds
    assert balance.normal_misfit(two, 4.0, mean, spread) > balance.MISFIT_LIMIT


def test_the_switch_takes_the_balance_price_where_its_fit_holds_and_the_tail_price_elsewhere():
    pre, W, z, codes = weak_spike_world(12)
    reading = balance.balance_reading(pre, W, z)
    assert reading.misfit < 0.05 and balance.switch_reader(reading) == "risk_balance"  # 0.010
    acts, k, used = balance.risk_switch(pre, W, z)
    assert used.item() == pytest.approx(reading.price, rel=1e-12)
    assert torch.equal(k, (acts != 0).sum(-1))
    pre, W, z, codes = world_with_unheld_spikes()  # true features far above, spikes at the cut
    reading = balance.balance_reading(pre, W, z)
    assert reading.misfit > balance.MISFIT_LIMIT and balance.switch_reader(reading) == "risk_tail"
    assert balance.switch_price(pre, W, z) == pytest.approx(risk.tail_price(pre, W, z), rel=1e-12)
    figures = balance.price_figures(pre, W, z)
    assert figures["switch_reader"] == "risk_tail"
    assert figures["switch_price"] == pytest.approx(figures["prices"]["risk_tail"], rel=1e-12)


@pytest.mark.parametrize(
    "rule", ["risk_refit", "risk_calibrated", "risk_tail", "risk_balance", "risk_switch"]
)
def test_the_refit_rules_keep_their_level_and_pass_gradients_to_the_kept_activations(rule):
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=32, d_sae=64, activation=rule))
    codes = torch.zeros(128, 64).scatter_(1, torch.randint(0, 64, (128, 2)), 3.0)
    with torch.no_grad():  # two of its own atoms per token, and noise: something to find
        x = codes @ sae.W_dec + sae.b_dec + 0.1 * torch.randn(128, 32)
    sae.train()
    out = sae(x)
    assert sae.threshold[0].item() > 0  # the batch's level, folded into the running one
    out.feature_acts.sum().backward()
    assert sae.W_enc.grad is not None and sae.W_enc.grad.abs().sum() > 0
    sae.eval()
    with torch.no_grad():
        fixed = sae(x).feature_acts
        sae.threshold.fill_(1e6)  # nothing pays so high a price
        assert (sae(x).feature_acts == 0).all()
        sae.threshold.fill_(1e-9)
        assert (sae(x).feature_acts != 0).sum() > (fixed != 0).sum()
