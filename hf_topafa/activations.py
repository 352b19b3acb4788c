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
    rows, cols, k = topafa_pairs(pre, decoder_norms, target_norm, candidates)
    mask = torch.zeros_like(pre, dtype=torch.bool)
    mask[rows, cols] = True
    return pre * mask, k


def topafa_pairs(
    pre: torch.Tensor,
    decoder_norms: torch.Tensor,
    target_norm: torch.Tensor,
    candidates: int = TOPAFA_CANDIDATES,
    nonnegative: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The features top-AFA keeps, as (token, feature) pairs sorted by token: (rows, cols, k).

    Same rule and tie-breaking as :func:`topafa`. Only ``candidates`` features per token are ranked;
    rows whose candidates fall short of the target, or tie at the cut, are ranked in full.
    ``nonnegative=True`` promises pre >= 0 (after a ReLU), which saves one pass.
    """
    n_tokens, d_sae = pre.shape
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
        contributions = (pre[redo].detach() * decoder_norms.detach()) ** 2
        full_values, full_order = contributions.sort(dim=-1, descending=True, stable=True)
        k[redo] = _nearest_prefix(full_values, target[redo])
        width = int(k.max())
        ranked = torch.zeros(n_tokens, width, dtype=torch.long, device=pre.device)
        ranked[:, : min(width, m)] = order[:, : min(width, m)]
        ranked[redo] = full_order[:, :width]
    keep = torch.arange(ranked.shape[1], device=pre.device) < k.unsqueeze(-1)
    rows, position = keep.nonzero(as_tuple=True)
    return rows, ranked.reshape(-1)[rows * ranked.shape[1] + position], k


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
