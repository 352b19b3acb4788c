"""Approximate Feature Activation (AFA) math, after Lee et al. (arXiv 2503.24277).

If a dense embedding z is a sum of h unit, epsilon-quasi-orthogonal feature directions
(|w_i . w_j| <= eps) weighted by a code f, then | ||z||^2 - ||f||^2 | <= eps (h - 1) ||f||^2.
The norm of z therefore predicts the norm of the sparse code. For an SAE, f~ is its feature
activations scaled by the decoder-row norms, with ||b_dec|| appended as one more entry, so that
h = d_sae + 1 is the length of f~. All functions work on the last dimension and broadcast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

OVER, WITHIN, UNDER = 1, 0, -1
EPS_H_BANDS = (0.25, 0.5, 1.0)  # the eps * (h - 1) values the paper draws on the ZF plot


def afa_norm(z: torch.Tensor) -> torch.Tensor:
    """The approximate feature activation: ||z||_2 over the last dimension."""
    return torch.linalg.vector_norm(z, dim=-1)


def scaled_feature_acts(
    f: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor | None = None
) -> torch.Tensor:
    """f~_i = f_i * ||W_dec,i||, with ||b_dec|| appended as a last entry when b_dec is given."""
    scaled = f * torch.linalg.vector_norm(W_dec, dim=-1)
    if b_dec is None:
        return scaled
    bias = torch.linalg.vector_norm(b_dec).to(scaled.dtype).expand(*scaled.shape[:-1], 1)
    return torch.cat([scaled, bias], dim=-1)


def scaled_feature_norm(
    f: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor | None = None
) -> torch.Tensor:
    """||f~|| = sqrt(sum_i (f_i ||W_dec,i||)^2 + ||b_dec||^2), without building f~."""
    squared = (f * torch.linalg.vector_norm(W_dec, dim=-1)).pow(2).sum(-1)
    if b_dec is not None:
        squared = squared + torch.linalg.vector_norm(b_dec).pow(2)
    return squared.sqrt()


def epsilon_lbo(z_norm: torch.Tensor, f_norm: torch.Tensor, h: int) -> torch.Tensor:
    """Lower bound on epsilon: eps_LBO = | ||z||^2 - ||f~||^2 | / ((h - 1) ||f~||^2).

    The smallest quasi-orthogonality epsilon consistent with the token. A token with ||f~|| = 0
    gets +inf (no finite epsilon explains a non-zero z with an empty code), or 0 when z is 0 too.
    """
    if h < 2:
        raise ValueError(f"h must be at least 2 (the length of f~); got {h}")
    f_sq = f_norm.pow(2)
    gap = (z_norm.pow(2) - f_sq).abs()
    eps = gap / ((h - 1) * f_sq)
    return torch.where(f_sq > 0, eps, torch.where(gap > 0, math.inf, 0.0).to(eps.dtype))


def zf_bounds(z_norm: torch.Tensor, eps_h: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The range of ||f~|| that the bound allows for a given eps (h - 1).

    lower = ||z|| / sqrt(1 + eps (h - 1)), upper = ||z|| / sqrt(1 - eps (h - 1)); the upper bound is
    +inf once eps (h - 1) >= 1.
    """
    if not eps_h > 0:
        raise ValueError(f"eps_h = eps * (h - 1) must be positive; got {eps_h}")
    lower = z_norm / math.sqrt(1 + eps_h)
    upper = z_norm / math.sqrt(1 - eps_h) if eps_h < 1 else torch.full_like(z_norm, math.inf)
    return lower, upper


def classify_tokens(z_norm: torch.Tensor, f_norm: torch.Tensor, eps_h: float) -> torch.Tensor:
    """Per token: OVER (1) above the upper bound, UNDER (-1) below the lower bound, else WITHIN (0).

    Over-activated tokens have a code too large for their embedding, under-activated ones too small.
    """
    lower, upper = zf_bounds(z_norm, eps_h)
    classes = torch.zeros_like(z_norm, dtype=torch.int8)
    classes[f_norm > upper] = OVER
    classes[f_norm < lower] = UNDER
    return classes


@torch.no_grad()
def decoder_quasi_orthogonality(W_dec: torch.Tensor, block_size: int = 4096) -> dict[str, float]:
    """Max and mean |cos| between distinct decoder rows, one block of rows at a time.

    Memory is block_size x d_sae, never d_sae x d_sae, so it scales to d_sae = 65536.
    """
    rows = W_dec.detach().float()
    rows = rows / torch.linalg.vector_norm(rows, dim=-1, keepdim=True).clamp_min(1e-12)
    n = rows.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 decoder rows to compare; got {n}")
    max_abs, total = 0.0, 0.0
    for start in range(0, n, block_size):
        block = rows[start : start + block_size]
        cos = block @ rows.T
        idx = torch.arange(block.shape[0], device=cos.device)
        cos[idx, idx + start] = 0.0  # drop each row's cosine with itself
        # vector norms of order inf and 1 are max |cos| and sum |cos|, without an abs() copy
        max_abs = max(max_abs, torch.linalg.vector_norm(cos, ord=math.inf).item())
        # per-row sums, then float64: one float32 sum over 10^8 entries stops growing at 2^24
        total += torch.linalg.vector_norm(cos, ord=1, dim=1).double().sum().item()
    return {"max_abs_cos": max_abs, "mean_abs_cos": total / (n * (n - 1))}


@torch.no_grad()
def zf_diagnostics(sae, x: torch.Tensor, out=None) -> dict[str, torch.Tensor]:
    """Per-token AFA diagnostics of an SAE on inputs x [..., d_in] (flattened to tokens).

    The one definition the library, evaluation and the Space use. z is the SAE's own input after
    its input normalization; f~ uses its W_dec and b_dec. ``z_norm`` and ``f_norm`` are given in
    the input's own scale: both multiplied by each token's ``scale`` (std + 1e-5 under the
    paper's standardization, 1 without normalization), so that ``z_norm`` is ||x - mean|| and
    the code's norm is measured in the same units. In the standardized space every token has
    ||z|| = sqrt(d_in - 1) and a ZF plot would be one vertical stripe. eps_LBO and the classes
    are ratios, the same in either scale (computed before scaling).
    ``out``: the SAE's output on ``x`` when the caller has already run it (then the SAE does
    not run again).
    Returns z_norm, f_norm, scale (divide by it for the SAE's working space), eps_lbo, l0, k
    (top-AFA's chosen k, else l0) and one class tensor per eps (h - 1) band, keyed
    ``class_0.25`` etc.
    """
    if out is None:
        out = sae(x)
    z, _, std = sae.normalize_input(x.reshape(-1, x.shape[-1]))
    acts = out.feature_acts.reshape(-1, sae.config.d_sae)
    z_norm = afa_norm(z)
    f_norm = scaled_feature_norm(acts, sae.W_dec, sae.b_dec)
    scale = sae.input_scale(std).reshape(-1).to(z_norm.dtype).expand_as(z_norm)
    h = sae.config.d_sae + 1
    result = {
        "z_norm": z_norm * scale,
        "f_norm": f_norm * scale,
        "scale": scale.clone(),
        "eps_lbo": epsilon_lbo(z_norm, f_norm, h),
        "l0": out.l0.reshape(-1),
        "k": (out.k if out.k is not None else out.l0).reshape(-1),
    }
    for eps_h in EPS_H_BANDS:
        result[f"class_{eps_h}"] = classify_tokens(z_norm, f_norm, eps_h)
    return result


def quantiles(values: torch.Tensor, qs: Sequence[float]) -> list[float]:
    """The qs-quantiles, linearly interpolated between order statistics (``torch.quantile``'s
    default), the one definition behind evaluate's reports and the Space. Tolerates +inf (a
    token with an empty code has eps_LBO = +inf): a quantile next to an infinite value is that
    value. NaN if empty."""
    data = values.detach().double().reshape(-1).sort().values
    if data.numel() == 0:
        return [math.nan for _ in qs]
    out = []
    for q in qs:
        pos = q * (data.numel() - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        a, b = float(data[lo]), float(data[hi])
        if math.isinf(a) or math.isinf(b) or lo == hi:
            out.append(b if pos > lo else a)
        else:
            out.append(a + (b - a) * (pos - lo))
    return out


def quantile(values: torch.Tensor, q: float) -> float:
    """One quantile as :func:`quantiles` defines it."""
    return quantiles(values, (q,))[0]
