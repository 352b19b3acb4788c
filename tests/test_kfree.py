"""The k-free rules of hf_topafa.kfree on hand-computed cases."""

import math

import pytest
import torch

from hf_topafa.sae import kfree, risk
from hf_topafa.sae.activations import topafa


def test_coherence_is_the_rms_cosine_of_distinct_rows():
    torch.manual_seed(0)
    W = torch.randn(300, 40) * torch.rand(300, 1)  # rows of any norm: cosines, not dot products
    unit = W / W.norm(dim=-1, keepdim=True)
    cos = unit @ unit.T
    off = cos[~torch.eye(300, dtype=torch.bool)]
    assert kfree.decoder_coherence_rms(W).item() == pytest.approx(off.pow(2).mean().sqrt().item())
    # Welch: h unit vectors in d dimensions cannot be more orthogonal than this
    welch = math.sqrt((300 - 40) / (40 * 299))
    assert kfree.decoder_coherence_rms(W).item() >= welch


def test_orthonormal_rows_have_zero_coherence():
    q, _ = torch.linalg.qr(torch.randn(16, 16))
    assert kfree.decoder_coherence_rms(q[:10]).item() ** 2 == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2 rows"):
        kfree.decoder_coherence_rms(torch.ones(1, 4))


def test_band_entry_keeps_the_smallest_k_inside_the_band():
    pre = torch.tensor([[3.0, 0.0, 4.0, 1.0]])
    ones = torch.ones(4)
    # contributions 16, 9, 1 (sorted): C = 16, 25, 26; lower edge 30.25 / (1 + 0.5 (k - 1))
    # = 30.25, 20.17 -> k = 2. Top-AFA takes the C nearest 5.5^2 instead: sqrt(26) -> k = 3.
    acts, k = kfree.band_entry(pre, ones, torch.tensor([5.5]), torch.tensor(0.5))
    assert k.tolist() == [2]
    assert acts.tolist() == [[3.0, 0.0, 4.0, 0.0]]
    _, k_afa = topafa(pre, ones, torch.tensor([5.5]))
    assert k_afa.tolist() == [3]


def test_band_entry_edge_cases():
    ones = torch.ones(3)
    # a tie at the cut keeps the lower feature index
    acts, k = kfree.band_entry(torch.tensor([[2.0, 2.0, 1.0]]), ones, torch.tensor([2.0]),
                               torch.tensor(0.0))  # fmt: skip
    assert k.tolist() == [1] and acts.tolist() == [[2.0, 0.0, 0.0]]
    # never entering the band keeps every positive feature; an all-zero token keeps none
    pre = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
    acts, k = kfree.band_entry(pre, ones, torch.tensor([10.0, 1.0]), torch.tensor(0.1))
    assert k.tolist() == [2, 1]
    assert acts.tolist() == [[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]]
    # decoder norms scale the contributions: a long row ranks first
    acts, k = kfree.band_entry(torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([5.0, 1.0, 1.0]),
                               torch.tensor([5.0]), torch.tensor(0.0))  # fmt: skip
    assert k.tolist() == [1] and acts.tolist() == [[1.0, 0.0, 0.0]]


def test_universal_threshold_keeps_what_interference_cannot_explain():
    pre = torch.tensor([[5.0, 1.0, 0.5, 3.0], [5.0, 1.0, 0.5, 3.0], [0.0, 0.0, 0.0, 0.0]])
    eps = torch.tensor(0.1)
    # theta = eps * sqrt(2 ln 4) * target = 1.665 at target 10, 16.65 at target 100
    acts, k = kfree.universal_threshold(pre, torch.ones(4), torch.tensor([10.0, 100.0, 1.0]), eps)
    assert kfree.universal_factor(4) == pytest.approx(math.sqrt(2 * math.log(4)))
    assert k.tolist() == [2, 1, 0]  # the second keeps its largest only; the empty row nothing
    assert acts.tolist() == [[5.0, 0.0, 0.0, 3.0], [5.0, 0.0, 0.0, 0.0], [0.0] * 4]


def test_gradients_reach_the_kept_features_only():
    pre = torch.tensor([[3.0, 0.0, 4.0, 1.0]], requires_grad=True)
    for rule in (kfree.band_entry, kfree.universal_threshold):
        pre.grad = None
        acts, _ = rule(pre, torch.ones(4), torch.tensor([5.5]), torch.tensor(0.5))
        acts.sum().backward()
        assert pre.grad.tolist() == (acts != 0).float().tolist()


def test_batch_band_spends_the_band_budget_across_the_batch():
    # band entry alone: token 0 keeps 1 feature (16 >= 16), token 1 keeps 2 (1 + 1 >= 2)
    pre = torch.tensor([[4.0, 3.0, 0.0], [1.0, 1.0, 0.0]])
    ones = torch.ones(3)
    target, eps = torch.tensor([4.0, math.sqrt(2.0)]), torch.tensor(0.0)
    assert kfree.band_entry(pre, ones, target, eps)[1].tolist() == [1, 2]
    # the batch keeps 3 pairs, the 3 largest of the batch: both of token 0's and one of token 1's
    acts, smallest = kfree.batch_band(pre, ones, target, eps)
    assert acts.tolist() == [[4.0, 3.0, 0.0], [1.0, 0.0, 0.0]]
    assert smallest.item() == 1.0
    # nothing positive: nothing kept, threshold estimate 0
    acts, smallest = kfree.batch_band(torch.zeros(2, 3), ones, target, eps)
    assert acts.abs().sum().item() == 0 and smallest.item() == 0.0


@pytest.mark.parametrize("candidates", [1, 3, 8, 40])
def test_band_entry_ranking_few_candidates_changes_nothing(candidates):
    torch.manual_seed(1)
    # coarse values make many ties, some at the cut; zero rows, short rows and long rows
    pre = torch.relu(torch.randint(-3, 4, (200, 48)).double())
    pre[:5] = 0
    pre[5:10, 2:] = 0
    norms = torch.randint(1, 3, (48,)).double()  # two norms: equal contributions abound
    target = torch.rand(200, dtype=torch.float64) * 12
    eps = torch.tensor(0.05, dtype=torch.float64)
    full_acts, full_k = kfree.band_entry(pre, norms, target, eps)
    acts, k = kfree.band_entry(pre, norms, target, eps, candidates=candidates)
    assert torch.equal(k, full_k) and torch.equal(acts, full_acts)
    rows, cols, k_pairs = kfree.band_entry_pairs(pre, norms, target, eps, candidates=candidates)
    assert torch.equal(k_pairs, full_k)
    assert torch.equal(torch.zeros_like(pre).index_put((rows, cols), pre[rows, cols]), full_acts)


# --- noise floor ------------------------------------------------------------------------------


def test_noise_floor_keeps_the_signals_above_the_interference_bulk():
    from hf_topafa.kfree import noise_floor

    torch.manual_seed(0)
    h, signals = 4096, 12
    noise = torch.randn(64, h).relu()  # half of the features: positive interference of scale 1
    pre = noise.clone()
    pre[:, :signals] = 8.0 + torch.rand(64, signals)  # firing features, far above the bulk
    acts, k = noise_floor(pre, torch.ones(h))
    kept_signals = (acts[:, :signals] > 0).sum(-1)
    false_positives = (acts[:, signals:] > 0).sum(-1)
    assert bool((kept_signals == signals).all())
    assert false_positives.float().mean() <= 2.0  # about one expected by construction
    assert torch.equal(k, (acts > 0).sum(-1))


def test_noise_floor_is_scale_free_and_counts_follow_the_signals():
    from hf_topafa.kfree import noise_floor

    torch.manual_seed(1)
    h = 2048
    pre = torch.randn(32, h).relu()
    counts = torch.arange(1, 33)
    for row, c in enumerate(counts.tolist()):
        pre[row, :c] = 10.0
    acts, k = noise_floor(pre, torch.ones(h))
    acts_scaled, k_scaled = noise_floor(pre * 37.0, torch.ones(h) / 2)
    assert torch.equal(k, k_scaled)
    assert torch.equal(acts > 0, acts_scaled > 0)
    assert torch.corrcoef(torch.stack([k.float(), counts.float()]))[0, 1] > 0.95


def test_noise_floor_keeps_nothing_without_positive_values_and_passes_gradients():
    from hf_topafa.kfree import noise_floor

    pre = torch.zeros(2, 16)
    pre[1, 3] = 2.0
    pre.requires_grad_(True)
    acts, k = noise_floor(pre, torch.ones(16))
    assert acts[0].abs().sum() == 0 and acts[1, 3] == 2.0
    acts.sum().backward()
    assert pre.grad[1, 3] == 1.0 and pre.grad[1, 2] == 0.0


def test_noise_batch_spends_the_noise_floor_budget_across_the_batch():
    from hf_topafa.kfree import batch_noise_floor, noise_floor

    torch.manual_seed(2)
    h = 1024
    pre = torch.randn(8, h).relu()
    pre[:4, :3] = 9.0  # tokens 0-3: three strong features each
    pre[4:, :1] = 3.0  # tokens 4-7: one weak one
    pre[0, 3] = 6.0  # a fourth for token 0, below its three but above the others' signals
    _, k = noise_floor(pre, torch.ones(h))
    acts, smallest = batch_noise_floor(pre, torch.ones(h))
    assert int((acts > 0).sum()) == int(k.sum())  # the budget is the noise floor's total
    # spent on the batch's largest: every 9.0 and the 6.0 are in; the smallest kept is the cut
    assert bool((acts[:4, :3] == 9.0).all()) and acts[0, 3] == 6.0
    kept = (pre * (acts > 0)).reshape(-1)
    assert smallest.item() == kept[kept > 0].min().item()
    assert bool((pre.reshape(-1)[kept == 0] <= smallest).all())


# --- AFA count --------------------------------------------------------------------------------


def test_afa_count_keeps_the_energy_over_one_features_energy():
    from hf_topafa.sae.kfree import afa_count, afa_count_k, first_energy

    pre = torch.zeros(3, 10)
    pre[0, :4] = torch.tensor([3.0, 2.0, 1.0, 0.5])
    pre[1, :2] = torch.tensor([2.0, 1.0])
    target = torch.tensor([4.0, 2.0, 0.5])  # energies 16, 4, 0.25 -> k = 4, 1, 1 at energy 4
    energy = torch.tensor(4.0)
    assert afa_count_k(target, energy, 10).tolist() == [4, 1, 1]
    acts, k, kept_energy = afa_count(pre, torch.ones(10), target, energy)
    assert torch.equal(acts[0], pre[0]) and acts[1].tolist()[:2] == [2.0, 0.0]
    assert k.tolist() == [4, 1, 0]  # a token with nothing positive keeps nothing
    assert kept_energy.item() == pytest.approx((9 + 4 + 1 + 0.25 + 4) / 5)
    assert first_energy(pre, torch.ones(10)).item() == pytest.approx((9 + 4 + 0) / 3)
    assert afa_count_k(torch.tensor([100.0]), torch.tensor(1e-3), 10).item() == 10  # clamped


def test_confident_energy_measures_what_the_encoder_detects_by_the_decoders_projection():
    from hf_topafa.sae.kfree import centred_noise_level, confident_energy

    torch.manual_seed(0)
    raw = torch.randn(256, 512) - 0.5  # interference centred below zero, as trained ones are
    expected = -0.5 + torch.special.ndtri(torch.tensor(1 - 0.5 / 512)).item()
    assert centred_noise_level(raw).median().item() == pytest.approx(expected, abs=0.15)
    raw[:, :5] = 5.0  # five detected features, shrunk by the encoder...
    projections = torch.randn(256, 512)
    projections[:, :5] = 6.0  # ...whose projections read their magnitude: energy 36
    assert confident_energy(raw, projections).item() == 36.0
    spread = raw.clone()
    spread[:, 5:105] = torch.rand(256, 100) * 0.8  # a hundred small activations besides
    assert confident_energy(spread, projections).item() == 36.0
    nothing = torch.zeros(4, 8)
    assert torch.isnan(confident_energy(nothing, nothing))  # nothing clears its level


def test_afa_energy_keeps_the_codes_energy_over_one_detected_features_energy():
    from hf_topafa import SAEConfig, SparseAutoencoder

    sae = SparseAutoencoder(SAEConfig(d_in=64, d_sae=64, activation="afa_energy"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(64))
        sae.W_dec.copy_(torch.eye(64))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    torch.manual_seed(0)
    x = 0.05 * torch.randn(32, 64)
    x[:16, :3] += 5.0  # three features of energy 25
    x[16:, 10:16] += 5.0  # six
    acts = sae.eval().encode(x)  # never estimated: E read from this batch
    assert (acts != 0).sum(-1).tolist() == [3] * 16 + [6] * 16
    assert bool((acts[:16, :3] > 0).all()) and bool((acts[16:, 10:16] > 0).all())
    sae.train()(x)  # training folds the batch's energy into the running estimate
    assert sae.threshold[0].item() == pytest.approx(25.0, rel=0.02)


def test_window_counts_and_the_crossing_read_windows_as_half_open_from_below():
    edges = torch.tensor([0.0, 1.0, 2.0, torch.inf])
    values = torch.tensor([[0.0, 0.5], [1.0, 1.5], [2.5, 9.0], [-3.0, 1.0]])
    # latent 0: 0.0 and -3.0 are not counted, 1.0 is in (0, 1], 2.5 in (2, inf)
    assert kfree.window_counts(values, edges).tolist() == [[1, 0, 1], [2, 1, 1]]
    observed = torch.tensor([[10.0, 10.0, 10.0], [10.0, 4.0, 0.0]])
    noise = torch.tensor([[9.0, 1.0, 0.0], [1.0, 3.0, 5.0]])
    # latent 0: only its first window is mostly noise; latent 1: its second (the third is empty)
    assert kfree.crossing_level(observed, noise, edges).tolist() == [1.0, 2.0]
    assert kfree.crossing_level(observed, torch.zeros(3), edges).tolist() == [0.0, 0.0]


def test_latent_noise_levels_sit_between_each_latents_interference_and_its_signal():
    gen = torch.Generator().manual_seed(0)
    scale = torch.tensor([1.0, 0.5, 2.0])
    estimator = kfree.LatentNoiseLevels(momentum=0.9)
    for _ in range(40):
        raw = torch.randn(1024, 3, generator=gen) * scale - 0.3
        on = torch.rand(1024, 3, generator=gen) < 0.02
        estimator.update(torch.where(on, 12.0 + torch.randn(1024, 3, generator=gen), raw))
    assert estimator.warm
    levels = estimator.levels()
    assert ((levels > -0.3 + 2.5 * scale) & (levels < 10)).all()
    # a latent whose values are all noise keeps (almost) nothing: its level is in the far tail
    noise_only = kfree.LatentNoiseLevels(momentum=0.9)
    for _ in range(40):
        noise_only.update(torch.randn(1024, 2, generator=gen))
    assert (noise_only.levels() > 3.0).all()


@pytest.mark.parametrize("n", [1, 7, 1024])
def test_gaussian_fit_reads_torch_quantiles_from_the_lower_half_alone(n):
    raw = torch.randn(n, 5, generator=torch.Generator().manual_seed(n)) * 3 + 1
    lower, median = torch.quantile(raw, torch.tensor([0.25, 0.5]), dim=0)
    location, scale = kfree.gaussian_fit(raw)
    assert torch.equal(location, median)
    assert torch.equal(scale, ((median - lower) / kfree.NORMAL_MEDIAN_ABS).clamp_min(1e-6))


def sorted_batch_keep(pre, decoder_norms, k):
    """batch_keep as a full stable sort says it: the B largest, ties to the lower flat index."""
    scaled = (pre * decoder_norms).reshape(-1)
    budget = int(k.sum().clamp(max=scaled.numel()))
    order = torch.sort(scaled, descending=True, stable=True)
    kept = order.indices[:budget][order.values[:budget] > 0]
    keep = torch.zeros_like(scaled, dtype=torch.bool)
    keep[kept] = True
    smallest = order.values[: len(kept)].min() if len(kept) else scaled.new_zeros(())
    return pre * keep.reshape(pre.shape), smallest


@pytest.mark.parametrize("budget", [0, 1, 7, 40, 95, 200])
def test_batch_keep_equals_a_stable_sort_ties_and_zeros_included(budget):
    torch.manual_seed(budget)
    # few distinct values: ties at the cut, and zeros (ReLU'd) inside the budget when it is large
    pre = torch.randint(0, 5, (8, 12)).float() * 0.5
    k = torch.zeros(8, dtype=torch.long)
    k[0] = budget
    acts, smallest = kfree.batch_keep(pre, torch.ones(12), k)
    want, want_smallest = sorted_batch_keep(pre, torch.ones(12), k)
    assert torch.equal(acts, want) and torch.equal(smallest, want_smallest)
    if 0 < budget < (pre > 0).sum():
        assert int((acts != 0).sum()) == budget  # exactly the budget, ties cut by index


def sparse_world_sample(n_per_token: int, tokens: int = 2048, h: int = 2048, d: int = 256):
    """Tokens that each hold ``n_per_token`` of ``h`` random unit features at magnitudes near 5,
    and those features (the dictionary that reads them)."""
    g = torch.Generator().manual_seed(n_per_token)
    features = torch.nn.functional.normalize(torch.randn(h, d, generator=g), dim=-1)
    codes = torch.zeros(tokens, h)
    on = torch.rand(tokens, h, generator=g).argsort(-1)[:, :n_per_token]
    codes.scatter_(1, on, 5 + 0.5 * torch.randn(tokens, n_per_token, generator=g))
    return codes @ features, features


def test_kurtosis_count_reads_the_features_per_token_where_they_differ_fourfold():
    for n in (4, 16):
        z, features = sparse_world_sample(n)
        count = float(kfree.kurtosis_count(z @ features.T, z))
        assert count == pytest.approx(n, rel=0.15)
    # a dictionary unrelated to the features has no excess fourth moment: the count is its cap
    z, _ = sparse_world_sample(8)
    other = torch.nn.functional.normalize(torch.randn(2048, 256), dim=-1)
    assert float(kfree.kurtosis_count(z @ other.T, z)) == pytest.approx(128, rel=0.05)
    assert float(kfree.kurtosis_count(torch.zeros(4, 8), torch.zeros(4, 6))) == 3.0


def test_afa_kurtosis_spends_its_count_across_the_batch():
    z, features = sparse_world_sample(6, tokens=512)
    pre = torch.relu(z @ features.T).requires_grad_()
    acts, smallest = kfree.batch_kurtosis(pre, torch.ones(2048), z @ features.T, z)
    kept = (acts != 0).sum()
    assert kept == round(float(kfree.kurtosis_count(z @ features.T, z)) * 512)
    assert float(smallest) == pytest.approx(float(acts.detach()[acts != 0].min()))
    acts.sum().backward()
    assert int((pre.grad != 0).sum()) == int(kept)


def test_risk_batch_spends_the_tokens_risk_inflation_counts_across_the_batch():
    z, features = sparse_world_sample(6, tokens=256, h=512, d=128)
    pre = torch.relu(z @ features.T).requires_grad_()
    norms = torch.ones(512)
    _, per_token = risk.risk_inflation(pre.detach(), features, z)
    acts, smallest = risk.batch_risk_inflation(pre, norms, features, z)
    kept = acts.detach() != 0
    assert int(kept.sum()) == int(per_token.sum())
    # spent on the batch's largest activations, wherever they sit
    assert float(pre.detach()[~kept].max()) <= float(smallest) + 1e-6
    assert float(smallest) == pytest.approx(float(acts.detach()[kept].min()))
    # on features standing clear of their interference the count is near the truth's 6
    assert int(kept.sum()) / 256 == pytest.approx(6, rel=0.15)
    acts.sum().backward()
    assert int((pre.grad != 0).sum()) == int(kept.sum())
