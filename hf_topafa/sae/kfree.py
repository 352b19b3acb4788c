"""k-free selection rules beyond the paper, grounded in the AFA bound and the decoder's measured
quasi-orthogonality (issue: a k-free SAE at low L0).

Both rules need one number from the decoder, its interference level: the root-mean-square
cosine between distinct decoder rows,

    eps_rms = sqrt( (||W^T W||_F^2 - sum_i ||w_i||^4) / (h (h - 1)) ),   W: unit rows [h, d],

computed exactly through the d x d Gram matrix (never the h x h one). For h unit vectors in
d dimensions it is at least the Welch bound sqrt((h - d) / (d (h - 1))) and about 1/sqrt(d) for
random directions.

- **Universal threshold** (``universal_threshold``). If z is a sum of features other than i,
  then pre_i = w_i . z is interference of size about eps_rms ||z||, and the largest of h such
  values is about eps_rms ||z|| sqrt(2 ln h) (the universal threshold of wavelet denoising,
  Donoho & Johnstone 1994). A feature is kept only when its decoder-scaled activation exceeds
  it: pre_i ||W_dec,i|| > eps_rms sqrt(2 ln h) ||x - b_dec||. Since the kept contributions sum
  to about ||x||^2 at most, L0 <= 1 / (2 eps_rms^2 ln h): about 37 at d = 576, h = 2304,
  with no k anywhere.
- **Band entry** (``band_entry``). Rank the contributions c_i = (pre_i ||W_dec,i||)^2 as
  top-AFA does, with C_k the sum of the k largest; the AFA bound for a code of k features says
  ||z||^2 <= (1 + eps (k - 1)) ||f||^2. Keep the smallest k whose cumulative norm enters that
  band, C_k >= ||x - b_dec||^2 / (1 + eps_rms (k - 1)), instead of top-AFA's nearest k.
- **Batch band** (``batch_band``). Band entry sets the budget, not the allocation: the batch
  keeps the sum over its tokens of their band-entry k, as the (token, feature) pairs with the
  largest decoder-scaled activations across the whole batch (BatchTopK's allocation, which
  spends each feature where it removes the most squared error, with a budget that no k sets).
  At inference a per-feature threshold estimated during training replaces the batch, as in
  BatchTopK.
- **Noise-floor batch** (``batch_noise_floor``). The same allocation, with a budget from the
  data instead of the geometry: the sum over tokens of how many activations clear their token's
  interference level (``noise_floor``).
- **Per-latent noise level** (``LatentNoiseLevels``). The noise floor across a latent's tokens
  instead of across a token's latents: each latent's interference is fitted as a Gaussian from
  the lower half of its own pre-activations, and the latent keeps a value where its values stop
  being mostly noise (the Bayes crossing, local false discovery rate 1/2). Read post hoc on
  ground truth it lands next to the best per-latent threshold the truth's labels allow
  (``scripts/synth_latent_noise.py``).
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def decoder_coherence_rms(W_dec: torch.Tensor) -> torch.Tensor:
    """eps_rms: the RMS cosine between distinct rows of W_dec [h, d] (rows normalized first)."""
    h = W_dec.shape[0]
    if h < 2:
        raise ValueError(f"the decoder needs at least 2 rows to measure coherence; got {h}")
    w = W_dec.float()
    w = w / torch.linalg.vector_norm(w, dim=-1, keepdim=True).clamp_min(1e-12)
    gram = w.T @ w  # [d, d]: its squared Frobenius norm is the sum of all squared cosines
    off_diagonal = gram.double().pow(2).sum() - h
    return (off_diagonal / (h * (h - 1))).clamp_min(0).sqrt().to(W_dec.dtype)


def universal_factor(h: int) -> float:
    """sqrt(2 ln h): the largest of h unit-variance interference terms, in standard deviations."""
    return math.sqrt(2 * math.log(h))


def universal_threshold(
    pre: torch.Tensor, decoder_norms: torch.Tensor, target_norm: torch.Tensor, eps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep feature i of a token when pre_i ||W_dec,i|| > eps sqrt(2 ln h) ||x - b_dec||.

    ``pre`` [N, h] (ReLU pre-activations), ``decoder_norms`` [h], ``target_norm`` [N],
    ``eps`` a scalar tensor (``decoder_coherence_rms``). Returns ``(acts, k)`` with k the number
    kept per token. Every token keeps at least its largest positive feature. The threshold is
    not differentiated; gradients reach the kept pre only.
    """
    h = pre.shape[-1]
    scaled = pre.detach() * decoder_norms.detach()
    theta = (eps * universal_factor(h) * target_norm).detach().unsqueeze(-1)
    # every token keeps at least its largest feature (as top-AFA keeps k >= 1): without it a
    # fresh SAE, whose activations all sit below the threshold, would have no gradient at all
    largest = scaled.argmax(-1, keepdim=True)
    keep = (scaled > theta).scatter(-1, largest, (scaled.gather(-1, largest) > 0))
    return pre * keep, keep.sum(-1)


def band_entry(
    pre: torch.Tensor,
    decoder_norms: torch.Tensor,
    target_norm: torch.Tensor,
    eps: torch.Tensor,
    candidates: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the smallest k whose cumulative contribution C_k reaches target^2 / (1 + eps (k-1)).

    Ranking, float64 prefix sums and ties at the cut (lower feature index kept) are top-AFA's.
    A token whose cumulative norm never enters the band keeps every positive feature; a token
    with no positive pre-activation keeps none (k = 1, L0 = 0, as in top-AFA).
    ``candidates`` ranks only that many largest contributions per token first (speed only; the
    result is the same). Returns ``(acts, k)``.
    """
    keep, k = _band_entry_mask(pre, decoder_norms, target_norm, eps, candidates)
    return pre * keep, k


def band_entry_pairs(
    pre: torch.Tensor,
    decoder_norms: torch.Tensor,
    target_norm: torch.Tensor,
    eps: torch.Tensor,
    candidates: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``band_entry``'s kept features as (token, feature) pairs sorted by token: (rows, cols, k),
    for the model's sparse route."""
    keep, k = _band_entry_mask(pre, decoder_norms, target_norm, eps, candidates)
    rows, cols = (keep & (pre > 0)).nonzero(as_tuple=True)
    return rows, cols, k


@torch.no_grad()
def _band_entry_mask(
    pre, decoder_norms, target_norm, eps, candidates: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept positions of band entry (bool [N, h]) and k [N].

    With ``candidates`` < h only that many largest contributions per token are ranked; a token
    whose cut is not proven by them (no entry among them, or a value at the cut equal to the
    first one left out, where the tie rule needs the rest) is ranked in full. Same result.
    """
    n, h = pre.shape
    contrib = (pre.detach() * decoder_norms.detach()).pow(2)
    lower_sq = target_norm.detach().double().pow(2).unsqueeze(-1)
    if candidates is None or candidates >= h:
        return _band_cut(contrib, torch.arange(h, device=pre.device).expand(n, h), lower_sq, eps)
    values, index = contrib.topk(candidates + 1, dim=-1)
    by_index = torch.sort(index, dim=-1).indices  # equal values: lower feature index first
    values, index = values.gather(-1, by_index), index.gather(-1, by_index)
    desc = torch.sort(values, dim=-1, descending=True, stable=True).indices
    values, index = values.gather(-1, desc), index.gather(-1, desc)
    keep, k = _band_cut(values[:, :candidates], index[:, :candidates], lower_sq, eps, h)
    at_cut = values.gather(-1, (k - 1).clamp(max=candidates - 1).unsqueeze(-1)).squeeze(-1)
    proven = (k <= candidates) & (at_cut > values[:, candidates])
    redo = (~proven).nonzero().squeeze(-1)
    if redo.numel():
        full = torch.arange(h, device=pre.device).expand(len(redo), h)
        keep[redo], k[redo] = _band_cut(contrib[redo], full, lower_sq[redo], eps)
    return keep, k


def _band_cut(contrib, index, lower_sq, eps, h: int | None = None):
    """Band entry over the contributions ``contrib`` [N, m] of features ``index`` [N, m]: they
    are sorted (stable, so lower index first among equals), summed in float64 and cut; a token
    that never enters keeps all its positive ones when m = h; when m < h, k = m + 1 marks it
    (the caller ranks it in full). Returns the kept positions as a bool [N, h] and k [N]."""
    n, m = contrib.shape
    h = m if h is None else h
    order = torch.sort(contrib, dim=-1, descending=True, stable=True).indices
    cumulative = contrib.gather(-1, order).double().cumsum(-1)
    ks = torch.arange(1, m + 1, device=contrib.device, dtype=torch.float64)
    enters = cumulative >= lower_sq / (1 + eps.double() * (ks - 1))
    none = m + 1 if m < h else (contrib > 0).sum(-1)
    k = torch.where(enters.any(-1), enters.double().argmax(-1) + 1, none).clamp_min(1)
    keep_sorted = torch.arange(m, device=contrib.device).unsqueeze(0) < k.unsqueeze(-1)
    keep = torch.zeros(n, h, dtype=torch.bool, device=contrib.device)
    keep.scatter_(-1, index.gather(-1, order), keep_sorted)
    return keep, k


def batch_band(
    pre: torch.Tensor, decoder_norms: torch.Tensor, target_norm: torch.Tensor, eps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_keep`` with each token's band-entry k (``band_entry``) as its share of the budget."""
    _, k = band_entry(pre, decoder_norms, target_norm, eps)
    return batch_keep(pre, decoder_norms, k)


def batch_keep(
    pre: torch.Tensor, decoder_norms: torch.Tensor, k: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the B largest decoder-scaled activations of the batch, B = k.sum() (BatchTopK's
    allocation with a budget that no k sets). Returns ``(acts, smallest)``: ``smallest`` is the
    smallest kept decoder-scaled activation (0 when nothing positive is kept), the inference
    threshold's estimate. Ties at the cut keep the lower flat index, as a stable sort would; a
    partial sort finds the cut (8x faster than sorting a [1024, 4096] batch)."""
    scaled = (pre.detach() * decoder_norms.detach()).reshape(-1)
    budget = int(k.sum().clamp(max=scaled.numel()))
    if budget == 0:
        return pre * 0, scaled.new_zeros(())
    cut = scaled.topk(budget, sorted=False).values.min()
    keep = scaled > cut
    ties = (scaled == cut).nonzero().squeeze(-1)
    keep[ties[: budget - int(keep.sum())]] = True
    keep &= scaled > 0
    smallest = scaled[keep].min() if bool(keep.any()) else scaled.new_zeros(())
    return pre * keep.reshape(pre.shape), smallest


NORMAL_MEDIAN_ABS = 0.6744897501960817  # the median of |N(0, 1)|, Phi^-1(3/4)


@torch.no_grad()
def token_noise_sigma(scaled: torch.Tensor) -> torch.Tensor:
    """Per token, the interference scale the noise floor reads from ``scaled`` [N, h]: the
    median of its positive values / Phi^-1(3/4), as if the interference across a token's
    latents were zero-centred Gaussian (NaN for a token with no positive value)."""
    positive = scaled > 0
    median = torch.where(positive, scaled, torch.nan).nanquantile(0.5, dim=-1)
    return median / NORMAL_MEDIAN_ABS


@torch.no_grad()
def centred_noise_level(raw: torch.Tensor) -> torch.Tensor:
    """Per token [N, 1], the level that half an interference term exceeds by chance when the
    interference across the token's latents is Gaussian about its own centre: median + spread *
    Phi^-1(1 - 1/(2h)), spread = median absolute deviation / Phi^-1(3/4), both read from all h
    values of ``raw`` [N, h] (decoder-scaled, before the ReLU). The noise floor's model with its
    centre read instead of assumed zero: on well-learned dictionaries the interference's mean is
    below zero, which the noise floor mistakes for a smaller scale."""
    centre, spread = token_centre_spread(raw)
    tail = torch.special.ndtri(torch.tensor(1 - 0.5 / raw.shape[-1], dtype=torch.float64))
    return centre + spread * tail.item()


@torch.no_grad()
def token_centre_spread(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token ([N, 1] each), the interference's centre and Gaussian scale read robustly from
    all of the token's values: the median, and the median absolute deviation / Phi^-1(3/4)."""
    centre = raw.median(-1, keepdim=True).values
    return centre, (raw - centre).abs().median(-1, keepdim=True).values / NORMAL_MEDIAN_ABS


@torch.no_grad()
def confident_energy(raw: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
    """The energy one confidently detected feature carries: the median of ``projections``
    squared over the batch's values of ``raw`` above their token's ``centred_noise_level``.

    ``raw`` [N, h]: decoder-scaled encoder products before the ReLU (they pick what is detected);
    ``projections`` [N, h]: x - b_dec onto each unit decoder row (they measure it). The encoder's
    values are not the measure: where the code spreads they shrink, and a count read from them
    inflates itself (L0 45.6 on the 4k world, as afa_count's runs away). The projection does not
    shrink, but it over-reads a latent that absorbed its feature's parent (1.5 times the true
    magnitude on the 4k world; ``scripts/synth_energy.py``). NaN when nothing clears its level."""
    above = confident_detections(raw)
    if not bool(above.any()):
        return raw.new_tensor(float("nan"))
    return projections[above].pow(2).median()


@torch.no_grad()
def confident_detections(raw: torch.Tensor) -> torch.Tensor:
    """[N, h] bool: the positive values of ``raw`` (decoder-scaled, before the ReLU) above their
    token's ``centred_noise_level``, the detections ``confident_energy`` measures."""
    return (raw > centred_noise_level(raw)) & (raw > 0)


@torch.no_grad()
def noise_floor_level(scaled: torch.Tensor) -> torch.Tensor:
    """Per token, the activation that one interference term in n+ exceeds by chance.

    ``scaled`` [N, h]: decoder-scaled ReLU pre-activations. sigma = median of the positive ones
    (the mean of the two middle ones for an even count) / Phi^-1(3/4); the level is
    sigma * Phi^-1(1 - 1/(2 n+)). A token with no positive value gets +inf.
    """
    count = (scaled > 0).sum(-1)
    sigma = token_noise_sigma(scaled)
    tail = 1 - 0.5 / count.clamp_min(1).double()
    level = sigma.double() * torch.special.ndtri(tail)
    return torch.where(count > 0, level, torch.inf).to(scaled.dtype)


def noise_floor(
    pre: torch.Tensor, decoder_norms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the features whose decoder-scaled activation exceeds the token's noise-floor level
    (``noise_floor_level``); every token with a positive value keeps at least its largest.
    Returns ``(acts, k)``; the level is not differentiated, gradients reach the kept pre only."""
    scaled = pre.detach() * decoder_norms.detach()
    level = noise_floor_level(scaled).unsqueeze(-1)
    largest = scaled.argmax(-1, keepdim=True)
    keep = (scaled > level).scatter(-1, largest, scaled.gather(-1, largest) > 0)
    return pre * keep, keep.sum(-1)


def batch_noise_floor(
    pre: torch.Tensor, decoder_norms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_keep`` with each token's noise-floor count (``noise_floor``) as its share of the
    budget: the count follows the data (how many activations clear their token's interference),
    while the allocation spends it where it removes the most squared error, so a feature still
    learning gets gradient where it is strongest instead of nowhere."""
    _, k = noise_floor(pre, decoder_norms)
    return batch_keep(pre, decoder_norms, k)


@torch.no_grad()
def kurtosis_count(projections: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Features per token in this batch, from the fourth moment of the decoder projections and
    the AFA (a 0-dim tensor, at least 1, at most d / 2).

    ``projections`` [N, h]: z onto each unit decoder row; ``z`` [N, d] = x - b_dec. If a token
    holds n features of energy a² each (so ‖z‖² = n a², the AFA) and every projection adds
    Gaussian interference of variance σ², then Σ p² = ‖z‖² + h σ² gives σ², and
    Σ p⁴ − 3hσ⁴ − 6σ²‖z‖² = n a⁴: the excess over the interference's fourth moment. Over the
    batch, a² = Σ excess / Σ ‖z‖² and the count is mean ‖z‖² / a². On the synthetic worlds' own
    features it reads 1.05 to 1.11 times the true L0 where that differs eightfold (1.23 on a
    world without a hierarchy), but as two factors cancelling: ‖z‖² holds features the
    dictionary lacks, and unequal magnitudes raise the fourth moment, so it reads 1.31-1.42x
    what the dictionary's width holds (``ground_truth.kurtosis_reading_of_truth``). A dictionary
    with no heavy tail (a random one) has no excess: the count is then its cap."""
    h, d = projections.shape[-1], z.shape[-1]
    energy = z.double().pow(2).sum(-1)
    p = projections.double()
    noise = (p.pow(2).sum(-1) - energy) / h
    excess = (p.pow(4).sum(-1) - 3 * h * noise.pow(2) - 6 * noise * energy).sum()
    cap = torch.tensor(d / 2, dtype=torch.float64, device=z.device)
    if not bool(excess > 0):
        return cap.float()
    count = energy.sum().pow(2) / (energy.numel() * excess)
    return count.clamp(1.0, cap).float()


def batch_kurtosis(
    pre: torch.Tensor, decoder_norms: torch.Tensor, projections: torch.Tensor, z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_keep`` with the batch's budget set by ``kurtosis_count``: how many features the
    batch holds by the AFA's energy over one feature's, spent on its largest activations."""
    budget = (kurtosis_count(projections, z) * pre.shape[0]).round()
    return batch_keep(pre, decoder_norms, budget)


@torch.no_grad()
def afa_count_k(target_norm: torch.Tensor, energy: torch.Tensor, h: int) -> torch.Tensor:
    """k = round(||x - b_dec||^2 / energy), clamped to 1..h: the AFA's energy in features."""
    k = (target_norm.double().pow(2) / energy.double().clamp_min(1e-30)).round()
    return k.clamp(1, h).long()


def afa_count(
    pre: torch.Tensor, decoder_norms: torch.Tensor, target_norm: torch.Tensor, energy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep each token's k = ``afa_count_k`` largest decoder-scaled activations (positive ones).

    Returns ``(acts, k, kept_energy)``: ``kept_energy`` is the mean squared decoder-scaled
    activation over the batch's kept features, the running estimate's next value.
    """
    h = pre.shape[-1]
    scaled = pre.detach() * decoder_norms.detach()
    k = afa_count_k(target_norm.detach(), energy, h)
    top = int(k.max())
    index = scaled.topk(top, dim=-1).indices
    ranked = torch.arange(top, device=pre.device).unsqueeze(0) < k.unsqueeze(-1)
    keep = torch.zeros_like(pre, dtype=torch.bool).scatter(-1, index, ranked) & (pre > 0)
    kept = keep.sum()
    kept_energy = (scaled.pow(2) * keep).sum() / kept.clamp_min(1)
    return pre * keep, keep.sum(-1), kept_energy


@torch.no_grad()
def first_energy(pre: torch.Tensor, decoder_norms: torch.Tensor) -> torch.Tensor:
    """The running energy's first value: the mean of each token's largest squared decoder-scaled
    activation (so training starts from few features per token, as top-AFA's k >= 1 does)."""
    return (pre * decoder_norms).max(-1).values.pow(2).mean().clamp_min(1e-30)


# windows of 0.25 sigma from 0.5 sigma up, the last one open: where a latent's values are read
# against its Gaussian interference
SIGMA_EDGES = torch.cat([torch.arange(0.5, 12.0, 0.25), torch.tensor([torch.inf])])


def window_counts(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """[h, W]: per latent (column of ``values`` [N, h]), how many values fall in each window
    (edges[j], edges[j + 1]]; values at or below edges[0] are not counted."""
    index = torch.bucketize(values, edges.to(values), right=False)  # edges[i-1] < v <= edges[i]
    h, windows = values.shape[-1], edges.numel() - 1
    flat = torch.arange(h, device=values.device) * (windows + 1) + index  # window j at j + 1
    counts = torch.zeros(h * (windows + 1), dtype=values.dtype, device=values.device)
    counts.index_add_(0, flat.reshape(-1), torch.ones_like(flat.reshape(-1), dtype=values.dtype))
    return counts.view(h, windows + 1)[:, 1:]


def crossing_level(observed: torch.Tensor, noise: torch.Tensor, edges: torch.Tensor):
    """Per latent, the upper edge of the highest window where the ``noise`` expected there
    exceeds half of what is ``observed`` (local false discovery rate 1/2: above it, signal
    outnumbers noise); ``edges[0]`` where no window is noisy. ``observed`` [h, W], ``noise``
    [h, W] or [W] (counts), ``edges`` [W + 1]."""
    noisy = (observed > 0) & (noise > 0.5 * observed)
    upper = torch.arange(1, observed.shape[-1] + 1, device=observed.device)
    return edges.to(observed)[torch.where(noisy, upper, 0).amax(-1)]


def gaussian_fit(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per latent, the location and scale of its interference, taken as Gaussian and read from
    the lower half of its values [N, h] (signal sits above): the median, and (median - lower
    quartile) / Phi^-1(3/4). The quartiles are ``torch.quantile``'s (linear interpolation, the
    same bits) from a partial sort of the lower half only, about 4x faster on a training batch."""
    ranks = torch.tensor([0.25, 0.5], dtype=raw.dtype, device=raw.device) * (raw.shape[0] - 1)
    below = ranks.floor().long()
    above = (below + 1).clamp_max(raw.shape[0] - 1)
    lower_half = raw.T.topk(int(above.max()) + 1, dim=1, largest=False, sorted=True).values
    lower, median = torch.lerp(lower_half[:, below], lower_half[:, above], ranks - below).T
    return median, ((median - lower) / NORMAL_MEDIAN_ABS).clamp_min(1e-6)


def centered_input(sae, x_n: torch.Tensor) -> torch.Tensor:
    """z = x_n - b_dec [N, d] (``x_n`` in the SAE's normalized space): the vector whose norm is
    the AFA, and what the encoder and the decoder rows read."""
    return x_n.reshape(-1, sae.config.d_in) - sae.b_dec


def decoder_scaled_preactivations(sae, x_n: torch.Tensor) -> torch.Tensor:
    """(x_n - b_dec) W_enc + b_enc before the ReLU, times each decoder row's norm [N, h]: the
    values a latent's noise level is read from (``x_n`` in the SAE's normalized space)."""
    z = centered_input(sae, x_n)
    return torch.addmm(sae.b_enc, z, sae.W_enc) * torch.linalg.vector_norm(sae.W_dec, dim=-1)


def decoder_projections(sae, x_n: torch.Tensor) -> torch.Tensor:
    """(x_n - b_dec) onto each unit decoder row [N, h]: how much of a latent's direction the
    input holds, whatever the encoder makes of it."""
    z = centered_input(sae, x_n)
    return z @ (sae.W_dec / torch.linalg.vector_norm(sae.W_dec, dim=-1, keepdim=True)).T


def gaussian_window_counts(n: float | torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """[W]: how many of ``n`` standard normal values fall in each window of ``edges``."""
    cdf = torch.special.ndtr(edges.double())
    return (n * (cdf[1:] - cdf[:-1])).float()


class LatentNoiseLevels:
    """Per-latent noise levels (``latent_noise``), estimated while training.

    Each latent's interference is taken as Gaussian: its location and scale are running means
    of ``gaussian_fit`` over batches, and its standardized values are counted into running
    (decayed) window counts. The latent's level is the ``crossing_level`` of those counts against
    the Gaussian's, in the input's decoder-scaled units, at least 0. No k: where a latent's
    signal is rare, the level sits high; where the latent fires often and strongly, low.
    """

    def __init__(self, momentum: float):
        self.momentum = momentum
        self.batches = 0
        self.location = self.scale = self.counts = None
        self.samples = 0.0

    @torch.no_grad()
    def update(self, raw: torch.Tensor) -> None:
        """Fold in a batch of decoder-scaled pre-activations before the ReLU [N, h]."""
        raw = raw.detach().float()
        location, scale = gaussian_fit(raw)
        if self.location is None:
            self.location, self.scale = location, scale
            self.counts = torch.zeros(raw.shape[-1], SIGMA_EDGES.numel() - 1, device=raw.device)
        else:
            m = self.momentum
            self.location = m * self.location + (1 - m) * location
            self.scale = m * self.scale + (1 - m) * scale
        counts = window_counts((raw - self.location) / self.scale, SIGMA_EDGES)
        self.counts = self.momentum * self.counts + counts
        self.samples = self.momentum * self.samples + raw.shape[0]
        self.batches += 1

    @property
    def warm(self) -> bool:
        """Whether the running fits have seen about one horizon (1 / (1 - momentum)) of batches."""
        return self.batches >= 1 / (1 - self.momentum)

    def levels(self) -> torch.Tensor:
        """[h]: each latent's level, decoder-scaled, at least 0."""
        expected = gaussian_window_counts(self.samples, SIGMA_EDGES).to(self.counts)
        z = crossing_level(self.counts, expected, SIGMA_EDGES)
        return (self.location + z * self.scale).clamp_min(0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The running state as tensors (none before the first batch): what a checkpoint keeps
        so that a resumed run continues the same estimate."""
        if self.location is None:
            return {}
        return {
            "location": self.location,
            "scale": self.scale,
            "counts": self.counts,
            "samples": torch.tensor(self.samples, dtype=torch.float64),
            "batches": torch.tensor(self.batches),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.location, self.scale, self.counts = state["location"], state["scale"], state["counts"]
        self.samples, self.batches = state["samples"].item(), int(state["batches"])


@torch.no_grad()
def follow_latent_noise(sae, raw: torch.Tensor) -> None:
    """``latent_noise`` while training: fold the batch's pre-activations before the ReLU [N, h]
    (the encoder's product, from ``Rule.observe``), decoder-scaled, into the SAE's
    ``LatentNoiseLevels`` (made on first use; a training checkpoint keeps it) and move its
    ``threshold`` to the levels once the fits are warm, and at once while it is unset (< 0)."""
    if getattr(sae, "latent_noise_levels", None) is None:
        sae.latent_noise_levels = LatentNoiseLevels(sae.config.batchtopk_threshold_momentum)
    estimator = sae.latent_noise_levels
    estimator.update(raw * torch.linalg.vector_norm(sae.W_dec, dim=-1))
    if estimator.warm or bool(sae.threshold[0] < 0):
        sae.threshold.copy_(estimator.levels())


NOISE_LEVELS_PREFIX = "latent_noise_levels."
"""Names of ``LatentNoiseLevels``' tensors in a training checkpoint's trainer state."""


def noise_levels_state(sae) -> dict[str, torch.Tensor]:
    """The SAE's ``LatentNoiseLevels`` state, named for a checkpoint (empty without one)."""
    estimator = getattr(sae, "latent_noise_levels", None)
    state = {} if estimator is None else estimator.state_dict()
    return {NOISE_LEVELS_PREFIX + name: tensor for name, tensor in state.items()}


def load_noise_levels_state(sae, tensors: dict[str, torch.Tensor], device) -> None:
    """Give the SAE the ``LatentNoiseLevels`` a checkpoint's tensors hold, if they hold one."""
    state = {
        name.removeprefix(NOISE_LEVELS_PREFIX): tensor.to(device)
        for name, tensor in tensors.items()
        if name.startswith(NOISE_LEVELS_PREFIX)
    }
    if state:
        sae.latent_noise_levels = LatentNoiseLevels(sae.config.batchtopk_threshold_momentum)
        sae.latent_noise_levels.load_state_dict(state)
