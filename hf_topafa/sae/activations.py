"""Sparse selection rules of the SAE family.

Each rule maps ReLU pre-activations ``pre`` [N, d_sae] to dense feature activations of the same
shape (zeros where a feature is inactive). Gradients flow into the kept pre-activations only.
"""

from __future__ import annotations

import torch

# Top-AFA first ranks this many candidates per token; rows whose candidates do not reach the
# target norm fall back to a full sort. Small L0 is the common case, so this avoids sorting d_sae.
TOPAFA_CANDIDATES = 256


def topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest pre-activations of each token."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, indices, values)


def batchtopk(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the ``k * N`` largest pre-activations of the whole batch (Bussmann et al., 2024).

    Returns the activations and the smallest positive value kept, which estimates the threshold
    used at inference.
    """
    flat = pre.reshape(-1)
    keep = min(k * pre.shape[0], flat.numel())
    values, indices = flat.topk(keep, sorted=False)
    acts = torch.zeros_like(flat).scatter(0, indices, values).reshape(pre.shape)
    positive = values[values > 0]
    smallest = positive.min() if positive.numel() else values.new_zeros(())
    return acts, smallest.detach()


def threshold_activation(pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Keep pre-activations strictly above a per-feature threshold (BatchTopK at inference)."""
    return pre * (pre > threshold)


def topafa(
    pre: torch.Tensor,
    decoder_norms: torch.Tensor,
    target_norm: torch.Tensor,
    candidates: int = TOPAFA_CANDIDATES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-AFA: per token, keep the k features whose cumulative norm is nearest a target norm.

    Features are ranked by their decoder-scaled squared contribution c_i = (pre_i * ||W_dec,i||)^2;
    with C_k the sum of the k largest, k is the value in 1..d_sae minimising |sqrt(C_k) - target|.

    Determinism: k depends only on the sorted contributions. When two cumulative norms are equally
    near, the smaller k wins. When contributions tie at the cut, the lower feature index is kept.
    A token whose pre-activations are all zero gets k = 1 and an all-zero activation vector
    (its L0 is 0). The target is ||x - b_dec|| in the paper's rule.

    Returns ``(acts, k)`` with k [N] (int64).
    """
    mask, k = topafa_mask(pre, decoder_norms, target_norm, candidates)
    if pre.requires_grad:
        return pre * mask.to(pre.dtype), k  # a float mask multiplies faster than a bool one
    acts = torch.empty_like(pre)
    for rows in _row_blocks(pre):  # small temporaries: no fresh [N, d_sae] float mask
        torch.mul(pre[rows], mask[rows].to(pre.dtype), out=acts[rows])
    return acts, k


def topafa_mask(
    pre: torch.Tensor,
    decoder_norms: torch.Tensor,
    target_norm: torch.Tensor,
    candidates: int = TOPAFA_CANDIDATES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The features :func:`topafa` keeps, as a bool mask [N, d_sae], and k [N].

    ``candidates`` is the expected k (plus a margin): when many features are kept, the cut is
    found from a histogram of the contributions (:func:`_bucket_cut`), never by a full sort.
    """
    d_sae = pre.shape[-1]
    if _use_buckets(candidates, d_sae):
        return _bucket_cut(pre, decoder_norms, target_norm)
    rows, cols, k = topafa_pairs(pre, decoder_norms, target_norm, candidates)
    mask = torch.zeros_like(pre, dtype=torch.bool)
    mask[rows, cols] = True
    return mask, k


def topafa_pairs(
    pre: torch.Tensor,
    decoder_norms: torch.Tensor,
    target_norm: torch.Tensor,
    candidates: int = TOPAFA_CANDIDATES,
    nonnegative: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The features top-AFA keeps, as (token, feature) pairs sorted by token: (rows, cols, k).

    Same rule and tie-breaking as :func:`topafa`. With few candidates only ``candidates``
    features per token are ranked; rows whose candidates fall short of the target, or tie at the
    cut, are ranked in full. With many, the histogram cut of :func:`topafa_mask` is used.
    ``nonnegative=True`` promises pre >= 0 (after a ReLU), which saves one pass.
    """
    n_tokens, d_sae = pre.shape
    if _use_buckets(candidates, d_sae):
        mask, k = _bucket_cut(pre, decoder_norms, target_norm)
        rows, cols = mask.nonzero(as_tuple=True)
        return rows, cols, k
    # Rank by |pre_i| * norm_i: the same order as its square, without squaring d_sae values.
    scaled = pre.detach() * decoder_norms.detach()
    if not nonnegative:
        scaled.abs_()
    target = target_norm.detach().to(scaled.dtype)
    m = max(1, min(int(candidates), d_sae))
    top, order = scaled.topk(m, dim=-1, sorted=True)
    values = top * top
    k = _nearest_prefix(values, target)

    # Rows that need the full ranking: the candidates fall short of the target, or contributions
    # tie across the cut (topk does not promise which tied index it returns).
    short = (k == m) & (m < d_sae)
    kept_last = values.gather(-1, (k - 1).unsqueeze(-1)).squeeze(-1)
    next_value = values.gather(-1, k.clamp(max=m - 1).unsqueeze(-1)).squeeze(-1)
    tie = (k < m) & (kept_last == next_value)
    redo = (short | tie).nonzero().squeeze(-1)
    if len(redo) == 0:
        ranked = order[:, : int(k.max())] if n_tokens else order[:, :0]
    else:
        full_values, full_order, k_redo = _full_sort(pre[redo], decoder_norms, target[redo])
        k[redo] = k_redo
        width = int(k.max())
        ranked = torch.zeros(n_tokens, width, dtype=torch.long, device=pre.device)
        ranked[:, : min(width, m)] = order[:, : min(width, m)]
        ranked[redo] = full_order[:, :width]
    keep = torch.arange(ranked.shape[1], device=pre.device) < k.unsqueeze(-1)
    rows, position = keep.nonzero(as_tuple=True)
    return rows, ranked.reshape(-1)[rows * ranked.shape[1] + position], k


# -- the histogram cut (many features kept) ---------------------------------------------------

# The histogram cut is used when the expected k is at least this many features: below it the
# cut lies among the few largest contributions, where ranking ``candidates`` of them is cheaper
# and the histogram's buckets are too sparse to bracket the cut.
TOPAFA_BUCKET_MIN_K = 128
# Buckets of the histogram: contributions are keyed by their float exponent and the top three
# mantissa bits (eight buckets per octave), in a window of this many buckets below the batch's
# largest key (64 octaves; anything smaller shares the lowest bucket).
_N_BUCKETS = 512
_MANTISSA_BITS = 3


def count_true(mask: torch.Tensor) -> torch.Tensor:
    """Per-row count of a bool [N, d] mask as int64 [N] (a bool sum first copies to int64)."""
    return mask.view(torch.uint8).sum(-1, dtype=torch.int32).long()


def _use_buckets(candidates: int, d_sae: int) -> bool:
    return int(candidates) >= TOPAFA_BUCKET_MIN_K and d_sae > int(candidates)


def _full_sort(pre, decoder_norms, target):
    """Rows ranked in full (stable sort: equal contributions keep the lower index first)."""
    contributions = (pre.detach() * decoder_norms.detach()) ** 2
    values, order = contributions.sort(dim=-1, descending=True, stable=True)
    return values, order, _nearest_prefix(values, target.to(values.dtype))


# The histogram cut works through the batch this many elements at a time: its temporaries
# (float64 and int64 copies among them) then stay a few MB, reused from the allocator instead of
# freshly mapped (and page-faulted) on every step, while the blocks stay few enough that the
# cut's ~100 small operations per block do not add up. Measured at 1 thread, interleaved, on the
# 2-core VM (top-AFA's selection on a [1024, d_sae] batch, medians of 25): d_sae 2304: 2^17
# 70 ms, 2^18 59, 2^19 51, 2^20 49, 2^22 (one block) 76; d_sae 4608: 103, 90, 85, 84, 118. The
# step's peak memory stays in its backward pass at 2^20.
_BLOCK_ELEMENTS = 1 << 20


def _row_blocks(pre: torch.Tensor):
    """Row slices covering pre [N, d] in blocks of about _BLOCK_ELEMENTS elements."""
    step = max(1, _BLOCK_ELEMENTS // max(1, pre.shape[-1]))
    return [slice(start, start + step) for start in range(0, pre.shape[0], step)]


def _bucket_cut(
    pre: torch.Tensor, decoder_norms: torch.Tensor, target_norm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-AFA's mask and k without sorting, block of tokens by block (see _bucket_cut_rows)."""
    if pre.shape[0] == 0:
        return torch.zeros_like(pre, dtype=torch.bool), torch.ones(0, dtype=torch.long)
    parts = [_bucket_cut_rows(pre[r], decoder_norms, target_norm[r]) for r in _row_blocks(pre)]
    if len(parts) == 1:
        return parts[0]
    return torch.cat([m for m, _ in parts]), torch.cat([k for _, k in parts])


def _bucket_cut_rows(
    pre: torch.Tensor, decoder_norms: torch.Tensor, target_norm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-AFA's mask and k without sorting d_sae contributions per token.

    1. Contributions c are bucketed by the bits of their float representation (monotone in the
       value for c >= 0), and each token's bucket sums S_b are added up in float64.
    2. The bucket where the cumulative sum from the top crosses target^2 brackets the cut; the
       contributions of that bucket and its two neighbours (the *band*) are sorted (stable, so
       equal contributions keep the lower index first), and the cumulative norms of the band's
       prefixes are the float64 sum of the buckets above plus the band's running sum.
    3. k is the band prefix nearest the target (smaller k on ties), as in :func:`_nearest_prefix`.

    Exactness: the float64 sums differ from the reference's running sum in their order only,
    so each cumulative norm is within ``(4 d + 2048) 2^-53 (norm + target)`` of the reference's.
    A token keeps this k only when its two neighbours k - 1 and k + 1 are in the band and both
    are farther from the target by more than twice that bound (or k + 1 adds a zero, which the
    reference's tie rule also rejects); the distance is unimodal in k, so k is then the
    reference's k. Every other token (near ties, a cut among the smallest contributions, all
    contributions short of the target, an all-zero token) is ranked by a full sort.
    """
    n_tokens, d_sae = pre.shape
    device = pre.device
    contributions = pre.detach() * decoder_norms.detach()
    contributions.mul_(contributions)  # the reference's (pre * norm) ** 2, without a new tensor
    c = contributions if contributions.dtype == torch.float64 else contributions.float()
    if c.dtype == torch.float64:
        bits, shift = c.view(torch.int64), 52 - _MANTISSA_BITS
    else:
        bits, shift = c.view(torch.int32), 23 - _MANTISSA_BITS
    target = target_norm.detach().to(contributions.dtype).double()  # as _nearest_prefix has it
    key = bits >> shift
    base = int(key.max()) - (_N_BUCKETS - 1) if n_tokens else 0
    index = key.sub_(base).clamp_(min=0).long()
    del key  # peak memory: the int32 keys go before the float64 copy arrives
    sums = torch.zeros(n_tokens, _N_BUCKETS, dtype=torch.float64, device=device)
    sums.scatter_add_(1, index, c.double())
    del index
    # S_ge[b]: sum of the buckets b and above, the running sum from the top (float64)
    s_ge = sums.flip(-1).cumsum(-1).flip(-1)
    t2 = target * target
    crossing = (s_ge >= t2.unsqueeze(-1)).sum(-1) - 1  # largest b with S_ge[b] >= target^2
    b = crossing.clamp(min=1, max=_N_BUCKETS - 1)
    lo_b, hi_b = b - 1, b + 2  # the band is buckets [b - 1, b + 1]

    def edge(bucket):
        """The smallest value of a bucket, as the contributions' float type."""
        raw = (bucket + base) << shift
        if c.dtype == torch.float64:
            return raw.view(torch.float64)
        return raw.to(torch.int32).view(torch.float32)

    hi_b_c = hi_b.clamp(max=_N_BUCKETS - 1)
    hi_value = torch.where(hi_b >= _N_BUCKETS, torch.full_like(c[:, 0], float("inf")), edge(hi_b_c))
    lo_value = edge(lo_b)
    above_sum = torch.where(
        hi_b >= _N_BUCKETS, torch.zeros_like(target), s_ge.gather(1, hi_b_c.unsqueeze(1))[:, 0]
    )
    above = c >= hi_value.unsqueeze(1)
    n_above = count_true(above)
    band = (c >= lo_value.unsqueeze(1)).logical_xor_(above)  # above lies inside c >= lo_value
    values, band_order, counts = _sort_band(c, band)
    width = values.shape[1]

    # cumulative norms of the prefixes that end at the band's edge (0) and inside it (1..width)
    running = torch.cat(
        [above_sum.unsqueeze(1), above_sum.unsqueeze(1) + values.clamp(min=0).double().cumsum(-1)],
        dim=1,
    )
    norms = running.sqrt()
    position = torch.arange(width + 1, device=device)
    count = n_above.unsqueeze(1) + position  # the k each prefix stands for
    valid = (position <= counts.unsqueeze(1)) & (count >= 1)
    distance = torch.where(valid, (norms - target.unsqueeze(1)).abs(), float("inf"))
    best = distance.argmin(-1)  # the first minimum: the smaller k on ties
    k = n_above + best

    slack = (4 * d_sae + 2048) * 2.0**-53 * (norms + target.unsqueeze(1)) + 1e-300
    pick = best.unsqueeze(1)
    d_best, s_best = distance.gather(1, pick)[:, 0], slack.gather(1, pick)[:, 0]
    left = (best - 1).clamp(min=0).unsqueeze(1)
    right = (best + 1).clamp(max=width).unsqueeze(1)
    left_ok = (k == 1) | (
        (best >= 1)
        & (distance.gather(1, left)[:, 0] - d_best > slack.gather(1, left)[:, 0] + s_best)
    )
    last = best == counts
    n_positive = torch.zeros_like(k)
    ends = last.nonzero()[:, 0]  # rare: k + 1 lies below the band
    n_positive[ends] = (c[ends] > 0).sum(-1)
    right_ok = (
        (best < counts)
        & (distance.gather(1, right)[:, 0] - d_best > slack.gather(1, right)[:, 0] + s_best)
    ) | (last & (k == n_positive))  # k + 1 would add a zero: the reference keeps k
    ok = left_ok & right_ok & (crossing >= 1) & (s_ge[:, 0] > 0) & torch.isfinite(s_ge[:, 0])

    keep_band = position[1:].unsqueeze(0) <= best.unsqueeze(1)  # the first `best` of the band
    mask = above  # rows not settled here are rewritten below
    kept_rows, kept_slots = (keep_band & ok.unsqueeze(1)).nonzero(as_tuple=True)
    mask[kept_rows, band_order[kept_rows, kept_slots]] = True
    short = ((crossing < 1) & (s_ge[:, 0] > 0) & torch.isfinite(s_ge[:, 0])).nonzero()[:, 0]
    if short.numel():
        total = s_ge[short, 0]
        _keep_all_positive(c[short], total, target[short], d_sae, short, mask, k, ok)
    redo = (~ok).nonzero().squeeze(-1)
    if redo.numel():
        _, full_order, k_redo = _full_sort(pre[redo], decoder_norms, target_norm.detach()[redo])
        k[redo] = k_redo
        ranks = torch.arange(d_sae, device=device)
        mask[redo] = torch.zeros_like(mask[redo]).scatter_(
            -1, full_order, ranks < k_redo.unsqueeze(-1)
        )
    return mask, k


def _sort_band(c: torch.Tensor, band: torch.Tensor):
    """Each row's band contributions, sorted descending (stable: equal ones keep the lower index
    first) into a [N, width] matrix padded with -1, their feature indices, and the band sizes."""
    n_tokens, device = c.shape[0], c.device
    band_rows, band_cols = band.nonzero(as_tuple=True)
    counts = torch.bincount(band_rows, minlength=n_tokens)
    width = int(counts.max()) if n_tokens else 0
    starts = torch.zeros(n_tokens, dtype=torch.long, device=device)
    starts[1:] = counts.cumsum(0)[:-1]
    slot = torch.arange(band_rows.numel(), device=device) - starts[band_rows]
    padded = torch.full((n_tokens, width), -1.0, dtype=c.dtype, device=device)
    padded[band_rows, slot] = c[band_rows, band_cols]
    cols_padded = torch.zeros(n_tokens, width, dtype=torch.long, device=device)
    cols_padded[band_rows, slot] = band_cols
    values, order = padded.sort(dim=-1, descending=True, stable=True)
    return values, cols_padded.gather(1, order), counts


def _keep_all_positive(c, total, target, d_sae, rows, mask, k, ok) -> None:
    """Tokens whose contributions all together fall short of the target: k = P, the number of
    positive ones (every further prefix adds zeros, and the tie rule keeps the smaller k), when
    dropping the smallest positive one moves the norm away from the target by more than the
    rounding bound of :func:`_bucket_cut`. Writes mask, k and ok in place for those rows."""
    positive = c > 0
    n_positive = positive.sum(-1)
    # zeros lifted above every contribution (adding 0.0 leaves the positive ones exact)
    smallest = (c + (~positive).to(c.dtype) * torch.finfo(c.dtype).max).amin(-1).double()
    norm_all = total.sqrt()
    norm_less = (total - smallest).clamp(min=0).sqrt()
    slack_all = (4 * d_sae + 2048) * 2.0**-53 * (norm_all + target) + 1e-300
    slack_less = (4 * d_sae + 2048) * 2.0**-53 * (norm_less + target) + 1e-300
    gap = (norm_less - target).abs() - (norm_all - target).abs()
    good = (n_positive == 1) | (gap > slack_all + slack_less)
    settled = rows[good]
    k[settled] = n_positive[good]
    mask[settled] = positive[good]
    ok[settled] = True


def topk_pairs(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest pre-activations of each token as (rows, cols) pairs sorted by token."""
    indices = pre.detach().topk(k, dim=-1, sorted=False).indices
    rows = torch.arange(pre.shape[0], device=pre.device).repeat_interleave(k)
    return rows, indices.reshape(-1)


def batchtopk_pairs(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k * N`` largest of the batch as (rows, cols) sorted by token, and the smallest
    positive value kept (see :func:`batchtopk`)."""
    flat = pre.detach().reshape(-1)
    keep = min(k * pre.shape[0], flat.numel())
    values, indices = flat.topk(keep, sorted=False)
    positive = values[values > 0]
    smallest = positive.min() if positive.numel() else values.new_zeros(())
    indices = indices.sort().values
    d_sae = pre.shape[-1]
    return indices // d_sae, indices % d_sae, smallest


def _nearest_prefix(sorted_values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """k in 1..m whose cumulative norm sqrt(sum of the k largest) is nearest target (ties: smaller).

    Sums run in float64 so that k does not depend on how many candidates were ranked (a float32
    prefix sum rounds differently with the length of the row it is computed over).
    """
    cumulative = sorted_values.double().cumsum(-1).sqrt()
    target = target.double()
    m = cumulative.shape[-1]
    # j = number of prefixes strictly below the target; the answer is j or j + 1 (as a count).
    below = torch.searchsorted(cumulative.contiguous(), target.unsqueeze(-1).contiguous())
    below = below.squeeze(-1)
    low = below.clamp(min=1, max=m)  # the largest k whose norm is below the target (at least 1)
    high = (below + 1).clamp(max=m)  # the smallest k whose norm reaches the target
    norm_low = cumulative.gather(-1, (low - 1).unsqueeze(-1))
    norm_high = cumulative.gather(-1, (high - 1).unsqueeze(-1))
    # Zero contributions make plateaus of equal norms: take the first k of a plateau.
    low = torch.searchsorted(cumulative, norm_low).squeeze(-1) + 1
    high = torch.searchsorted(cumulative, norm_high).squeeze(-1) + 1
    norm_low, norm_high = norm_low.squeeze(-1), norm_high.squeeze(-1)
    pick_high = (norm_high - target).abs() < (target - norm_low).abs()
    return torch.where(pick_high, high, low)


def topafa_reference(
    pre: torch.Tensor, decoder_norms: torch.Tensor, target_norm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule written directly, with a full stable sort; tests compare the fast path to it."""
    contributions = (pre.detach() * decoder_norms.detach()) ** 2
    values, order = contributions.sort(dim=-1, descending=True, stable=True)
    norms = values.double().cumsum(-1).sqrt()
    distance = (norms - target_norm.detach().double().unsqueeze(-1)).abs()
    k = distance.argmin(dim=-1) + 1  # argmin returns the first minimum: the smaller k on ties
    ranks = torch.arange(pre.shape[-1], device=pre.device).expand_as(pre)
    mask = torch.zeros_like(pre, dtype=torch.bool).scatter(-1, order, ranks < k.unsqueeze(-1))
    return pre * mask, k


class _JumpReLUFunction(torch.autograd.Function):
    """pre * H(pre - threshold), with the straight-through threshold gradient of Rajamanoharan et al."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad_out):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad_out * (pre > threshold)
        window = ((pre - threshold).abs() < eps / 2).to(pre.dtype)
        grad_threshold = -(threshold / eps) * window * grad_out
        return grad_pre, grad_threshold.reshape(-1, threshold.shape[-1]).sum(0), None


class _StepFunction(torch.autograd.Function):
    """H(pre - threshold), differentiable in the threshold only (for the L0 penalty)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        window = ((pre - threshold).abs() < eps / 2).to(pre.dtype)
        grad_threshold = -(1.0 / eps) * window * grad_out
        return None, grad_threshold.reshape(-1, threshold.shape[-1]).sum(0), None


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """JumpReLU: zero every pre-activation at or below its feature's threshold."""
    return _JumpReLUFunction.apply(pre, threshold, bandwidth)


def jumprelu_l0(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Per-token L0 of a JumpReLU layer, with a pseudo-gradient for the threshold."""
    return _StepFunction.apply(pre, threshold, bandwidth).sum(-1)
