"""The risk inflation criterion (Foster & George 1994) as a k-free count: each token keeps the k
of its ranked features (largest decoder-scaled activation first) that best trades the residual of
the k-feature reconstruction, RSS_k, against the price of naming k features out of h, 2 k ln h
in units of the residual's noise level sigma^2 per dimension.

Two ways to get sigma^2, each a rule, and a stricter keep at the pooled one:

- **Per token** (``risk_inflation``, ``risk_batch``): sigma^2 unknown, estimated from the token's
  own residual as RSS_k / d, which gives d ln RSS_k + 2 k ln h. Each token then prices its
  latents by its own residual: a token whose residual is small keeps adding latents that shave
  it (on the sparse world more of the kept latents are false than true), and the count follows
  how the token's residual falls more than how many features it holds.
- **Pooled** (``risk_pooled``): one sigma^2 for all tokens, the pooled residual
  sum_t RSS_t(k_t) / sum_t (d - k_t) at the counts it selects (a fixed point, started from the
  per-token counts), and each token keeps the k minimizing RSS_k / sigma^2 + 2 k ln h: the
  criterion with its noise level known, as its authors state it. While training the pooled
  level is a running mean; at inference it is fixed.
- **Pooled, each latent paying** (``risk_floor``): the pooled count, then each kept latent must
  also pay the price alone, its own contribution^2 >= 2 ln h sigma^2. With orthonormal rows the
  two agree (the criterion is then a hard threshold at that level); with a learned decoder the
  count along the ranking can reach past latents that shave the residual less than they cost,
  and on the sparse world most of those were false.
"""

from __future__ import annotations

import math

import torch

from .kfree import batch_keep

RISK_CANDIDATES = 256  # features ranked per token (the count is at most this)
POOLED_ITERATIONS = 20  # at most; the fixed point stops once the counts repeat


@torch.no_grad()
def ranked_residuals(
    scaled: torch.Tensor, pre: torch.Tensor, W_dec: torch.Tensor, z: torch.Tensor, chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """(RSS [N, m + 1] in float64, the ranked candidates' feature indices [N, m]): column k holds
    ||z - sum of the first k ranked features' decoded contributions||^2, column 0 ||z||^2.

    ``scaled`` [N, h]: decoder-scaled activations (the ranking), ``pre`` [N, h] the activations,
    ``W_dec`` [h, d], ``z`` = x_n - b_dec [N, d]."""
    n, h = pre.shape
    m = min(h, RISK_CANDIDATES)
    index = scaled.topk(m, dim=-1).indices  # sorted, largest first
    rss = torch.empty(n, m + 1, dtype=torch.float64, device=pre.device)
    rss[:, 0] = z.double().pow(2).sum(-1)
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        idx = index[rows]
        f = pre[rows].gather(-1, idx).float()
        partial = (f.unsqueeze(-1) * W_dec[idx].float()).cumsum(1)  # [c, m, d]
        rss[rows, 1:] = (z[rows].float().unsqueeze(1) - partial).pow(2).sum(-1).double()
    return rss.clamp_min(1e-30), index


def per_token_counts(rss: torch.Tensor, d: int, h: int) -> torch.Tensor:
    """k [N] minimizing d ln RSS_k + 2 k ln h (k = 0 allowed): sigma^2 from each token's own
    residual."""
    ks = torch.arange(rss.shape[-1], device=rss.device, dtype=torch.float64)
    return (d * rss.log() + 2 * ks * math.log(h)).argmin(-1)


def known_noise_counts(rss: torch.Tensor, h: int, sigma2: float | torch.Tensor) -> torch.Tensor:
    """k [N] minimizing RSS_k / sigma^2 + 2 k ln h (k = 0 allowed): the noise level given."""
    ks = torch.arange(rss.shape[-1], device=rss.device, dtype=torch.float64)
    sigma2 = torch.as_tensor(sigma2, dtype=torch.float64, device=rss.device).clamp_min(1e-30)
    return (rss / sigma2 + 2 * ks * math.log(h)).argmin(-1)


def pooled_noise(rss: torch.Tensor, k: torch.Tensor, d: int) -> torch.Tensor:
    """sum_t RSS_t(k_t) / sum_t (d - k_t): the residual's variance per dimension over the batch,
    each token's k features taken out of its degrees of freedom."""
    residual = rss.gather(-1, k.unsqueeze(-1)).sum()
    return residual / (d - k).clamp_min(1).double().sum()


def pooled_counts(rss: torch.Tensor, d: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(k [N], sigma^2) at the fixed point of ``pooled_noise`` and ``known_noise_counts``, started
    from ``per_token_counts``."""
    k = per_token_counts(rss, d, h)
    for _ in range(POOLED_ITERATIONS):
        sigma2 = pooled_noise(rss, k, d)
        settled = known_noise_counts(rss, h, sigma2)
        if torch.equal(settled, k):
            break
        k = settled
    return k, pooled_noise(rss, k, d)


def risk_inflation_counts(
    pre: torch.Tensor,
    decoder_norms: torch.Tensor,
    W_dec: torch.Tensor,
    z: torch.Tensor,
    sigma2: float | torch.Tensor | None = None,
    pooled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(k [N], ranked candidates [N, m], the pooled sigma^2 or None). Each token's count is at
    least 1 where a positive activation exists (as top-AFA keeps k >= 1) and at most its positive
    activations. ``sigma2`` given: the known-noise criterion at that level; else ``pooled``: the
    batch's pooled level; else each token's own (the log form). Nothing is differentiated."""
    scaled = pre.detach() * decoder_norms.detach()
    rss, index = ranked_residuals(scaled, pre.detach(), W_dec.detach(), z.detach())
    d, h = z.shape[-1], pre.shape[-1]
    level = None
    if sigma2 is not None:
        k = known_noise_counts(rss, h, sigma2)
    elif pooled:
        k, level = pooled_counts(rss, d, h)
    else:
        k = per_token_counts(rss, d, h)
    positive = (scaled > 0).sum(-1)
    k = torch.minimum(k, positive)
    return torch.where(positive > 0, k.clamp_min(1), k), index, level


def keep_counted(pre, W_dec, z, sigma2=None, pooled: bool = False, floor: bool = False):
    """(acts, kept per token, pooled level or None): each token's first k ranked candidates
    (positive ones), k from ``risk_inflation_counts`` with these options; with ``floor`` (a known
    or pooled level only) only those whose own contribution^2 pays 2 ln h sigma^2."""
    decoder_norms = torch.linalg.vector_norm(W_dec.detach(), dim=-1)
    k, index, level = risk_inflation_counts(pre, decoder_norms, W_dec, z, sigma2, pooled)
    ranked = torch.arange(index.shape[-1], device=pre.device).unsqueeze(0) < k.unsqueeze(-1)
    keep = torch.zeros_like(pre, dtype=torch.bool).scatter(-1, index, ranked) & (pre > 0)
    if floor:
        price = 2 * math.log(pre.shape[-1]) * float(sigma2 if level is None else level)
        keep &= (pre.detach() * decoder_norms).pow(2) >= price
    return pre * keep, keep.sum(-1), level


def risk_inflation(
    pre: torch.Tensor, W_dec: torch.Tensor, z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each token's first k ranked features, k from the log form. Returns ``(acts, k)``; the
    cut is not differentiated, gradients reach the kept activations only."""
    acts, k, _ = keep_counted(pre, W_dec, z)
    return acts, k


def risk_pooled(
    pre: torch.Tensor,
    W_dec: torch.Tensor,
    z: torch.Tensor,
    sigma2: float | None = None,
    floor: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep each token's first k ranked features, k from the known-noise criterion at ``sigma2``,
    or at the batch's pooled level where None; with ``floor``, of those only the ones that pay
    the price alone (``risk_floor``). Returns ``(acts, kept per token, the level used)``."""
    acts, k, level = keep_counted(pre, W_dec, z, sigma2, sigma2 is None, floor)
    used = level if sigma2 is None else torch.as_tensor(sigma2, dtype=torch.float64)
    return acts, k, used


def batch_risk_inflation(
    pre: torch.Tensor, decoder_norms: torch.Tensor, W_dec: torch.Tensor, z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_keep`` with each token's risk-inflation count (log form) as its share of the
    budget. Read post hoc, risk inflation keeps about what the width holds where features stand
    clear of their interference, but its per-token count follows the truth loosely (0.5 to 0.7);
    spent across the batch, the same total goes to the tokens whose activations are largest, as
    noise_batch's does (whose per-token count follows the truth at 0.75 to 0.86)."""
    k, _, _ = risk_inflation_counts(pre, decoder_norms, W_dec, z)
    return batch_keep(pre, decoder_norms, k)
