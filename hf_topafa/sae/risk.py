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
- **Pooled, amplitudes re-fit** (``risk_refit``): the encoder's activations understate a
  feature's amplitude where many fire together in few dimensions (on a flat 256-dimensional
  world the firings the floor dropped had true amplitude 4.7 but activations 2.7 against a
  price of 3.1). So each token's largest candidates are re-fit by least squares on the
  decoder's rows, and the one whose removal raises the residual least is dropped until each
  one left raises it by at least the price 2 ln h sigma^2 (backward elimination at the known
  level; a negative amplitude goes first). The level is the pooled residual per dimension at
  the counts kept, a fixed point started from ``risk_pooled``'s on each batch's first tokens.
  The code holds the re-fit amplitudes. Least squares also lets several latents together fit
  energy the dictionary does not hold, which the encoder was trained not to do: on a sparse
  world (mix) it kept 0.9 false latents per sample more than the floor, even at the true level.
- **Re-fit, the price calibrated** (``risk_calibrated``): ``risk_refit``'s elimination at the
  price empirical Bayes gives (George & Foster 2000) instead of 2 ln h sigma^2: the Bayes
  threshold for a latent on with probability p whose amplitude, when on, is Gaussian with
  variance c sigma^2, with p (the share of latents kept) and c (their mean squared contribution
  over sigma^2, less the noise's 1) read from the reading itself at a fixed point with sigma^2.
  The price rises where few latents are on far above the noise (a sparse world, where
  ``risk_refit``'s false latents were small least-squares amplitudes on latents matched to
  features the width cannot hold) and falls where many are on.
- **Re-fit, the price from the residual's tail** (``risk_tail``): under Gaussian noise the
  price 2 ln h sigma^2 is the level a left-out latent's contribution passes with probability
  P(|N(0, 1)| > sqrt(2 ln h)). Where the residual is a few features the dictionary does not
  hold rather than Gaussian noise, its projections onto the rows are heavier-tailed and that
  price lets them through. So the price keeps the probability and takes the distribution from
  the data: the same tail quantile of the squared projections of the reading's residual onto
  the unit rows it left out, at a fixed point.
- **Re-fit, a count-unbiased price** (``risk_balance``) and **balance or tail** (``risk_switch``):
  in ``hf_topafa.sae.balance``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .kfree import batch_keep

RISK_CANDIDATES = 256  # features ranked per token (the count is at most this)
POOLED_ITERATIONS = 20  # at most; the fixed point stops once the counts repeat
REFIT_CANDIDATES = 64  # each token's largest decoder-scaled activations re-fit by least squares
REFIT_DIMENSIONS_PER_CANDIDATE = 4  # and at most d / 4 of them: near d rows fit any token exactly
REFIT_TOLERANCE = 1e-3  # the re-fit level's fixed point stops once it moves less than this share
REFIT_LEVEL_TOKENS = 1024  # a batch's level is found on its first tokens (each step re-fits all)


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


@torch.no_grad()
def pooled_level(pre: torch.Tensor, W_dec: torch.Tensor, z: torch.Tensor) -> float:
    """The noise level ``risk_pooled`` (and ``risk_floor``) settles on for this batch: the
    ``pooled_counts`` fixed point over the candidates ranked by decoder-scaled activation."""
    norms = torch.linalg.vector_norm(W_dec, dim=-1)
    rss, _ = ranked_residuals(pre * norms, pre, W_dec, z)
    return float(pooled_counts(rss, z.shape[-1], pre.shape[-1])[1])


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


@torch.no_grad()
def refit_kept(
    pre: torch.Tensor,
    W_dec: torch.Tensor,
    z: torch.Tensor,
    price: float,
    chunk: int = 512,
    first: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(amplitudes [N, h], residual energy [N]): each token's ``REFIT_CANDIDATES`` largest
    decoder-scaled positive activations (at most d / ``REFIT_DIMENSIONS_PER_CANDIDATE``; with
    ``first`` [N], only each token's first that many of them), re-fit by least squares to
    ``z`` [N, d] on ``W_dec``'s rows, then backward elimination (``eliminate``): while some kept
    candidate's removal would raise the residual by less than ``price`` (or its amplitude is
    not positive), the one that would raise it least is dropped and the rest re-fit.
    Amplitudes are zero off the kept set."""
    n, h = pre.shape
    m = min(h, REFIT_CANDIDATES, z.shape[-1] // REFIT_DIMENSIONS_PER_CANDIDATE)
    norms = torch.linalg.vector_norm(W_dec, dim=-1)
    amplitudes = torch.zeros_like(pre)
    residual = torch.empty(n, dtype=torch.float64, device=pre.device)
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        index = (pre[rows] * norms).topk(m, dim=-1).indices
        keep = pre[rows].gather(-1, index) > 0
        if first is not None:
            keep &= torch.arange(m, device=pre.device) < first[rows].unsqueeze(-1)
        rows_of = W_dec[index].double()  # [c, m, d]
        gram = rows_of @ rows_of.transpose(1, 2)
        target = (rows_of @ z[rows].double().unsqueeze(-1)).squeeze(-1)
        coef = eliminate(gram, target, keep, price)
        amplitudes[rows] = amplitudes[rows].scatter(-1, index, coef.to(pre.dtype))
        fitted = (coef.unsqueeze(-1) * rows_of).sum(1)
        residual[rows] = (z[rows].double() - fitted).pow(2).sum(-1)
    return amplitudes, residual


def eliminate(gram: torch.Tensor, target: torch.Tensor, keep: torch.Tensor, price: float):
    """Least-squares amplitudes [c, m] on the candidates ``keep`` [c, m] leaves, after backward
    elimination at ``price`` (``refit_kept``); ``gram`` [c, m, m] and ``target`` [c, m] are the
    candidates' rows' inner products with each other and with the token. Each step drops, per
    token still dropping, the candidate whose amplitude is not positive or whose removal raises
    the residual least; the kept rows' Gram matrix is inverted once and its inverse down-dated
    as rows are dropped."""
    mask = keep.double()
    inverse = torch.linalg.inv(gram * mask.unsqueeze(1) * mask.unsqueeze(2)
                               + torch.diag_embed(1 - mask))  # fmt: skip
    coef = torch.zeros_like(target)
    active = torch.arange(len(keep), device=keep.device)
    while len(active):
        fit = (inverse @ (target * mask).unsqueeze(-1)).squeeze(-1) * mask
        coef[active] = fit
        raise_ = fit.pow(2) / inverse.diagonal(dim1=1, dim2=2)  # the residual's rise on removal
        score = torch.where(fit > 0, raise_, torch.full_like(fit, -1.0))
        weakest, which = torch.where(mask > 0, score, torch.full_like(fit, math.inf)).min(-1)
        failing = weakest < price
        if not bool(failing.all()):  # keep only the tokens still dropping
            active, which = active[failing], which[failing]
            inverse, target, mask = inverse[failing], target[failing], mask[failing]
        rows = torch.arange(len(active), device=keep.device)
        mask[rows, which] = 0.0
        column = inverse[rows, :, which]  # [a, m]: the dropped row's column of the inverse
        inverse -= column.unsqueeze(-1) * column.unsqueeze(1) / column[rows, which][:, None, None]
        inverse[rows, which, :] = 0.0
        inverse[rows, :, which] = 0.0
        inverse[rows, which, which] = 1.0
    return coef


def refit_level(
    pre: torch.Tensor, W_dec: torch.Tensor, z: torch.Tensor, first: torch.Tensor | None = None
) -> float:
    """The fixed point of the pooled residual per dimension sum_t RSS_t / sum_t (d - k_t) at
    the counts ``refit_kept`` keeps at its price (``first`` as there), started from
    ``risk_pooled``'s level."""
    d, h = z.shape[-1], pre.shape[-1]
    level = pooled_level(pre, W_dec, z)
    for _ in range(POOLED_ITERATIONS):
        amplitudes, residual = refit_kept(pre, W_dec, z, 2 * math.log(h) * level, first=first)
        k = (amplitudes != 0).sum(-1)
        settled = float(residual.sum() / (d - k).clamp_min(1).double().sum())
        if abs(settled - level) <= REFIT_TOLERANCE * level:
            return settled
        level = settled
    return level


def risk_refit(
    pre: torch.Tensor, W_dec: torch.Tensor, z: torch.Tensor, sigma2: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each token's re-fit amplitudes at the price 2 ln h sigma^2 (``refit_kept``), at
    ``sigma2`` or, where None, at the batch's ``refit_level`` (found on its first
    ``REFIT_LEVEL_TOKENS`` tokens).
    Returns ``(acts, kept per token, the level used)``: acts hold the re-fit amplitudes, and
    gradients reach the kept activations as if they were the encoder's (straight through)."""
    first = slice(0, REFIT_LEVEL_TOKENS)
    level = (
        float(sigma2)
        if sigma2 is not None
        else refit_level(pre.detach()[first], W_dec.detach(), z.detach()[first])
    )
    acts, k = refit_code(pre, W_dec, z, 2 * math.log(pre.shape[-1]) * level)
    return acts, k, torch.as_tensor(level, dtype=torch.float64)


def refit_code(
    pre: torch.Tensor, W_dec: torch.Tensor, z: torch.Tensor, price: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(acts, kept per token): ``refit_kept``'s amplitudes at ``price``, with gradients reaching
    the kept activations as if they were the encoder's (straight through)."""
    amplitudes, _ = refit_kept(pre.detach(), W_dec.detach(), z.detach(), price)
    kept = amplitudes != 0
    return pre * kept + (amplitudes - pre.detach()) * kept, kept.sum(-1)


def calibrated_factor(kept_share: float, signal_to_noise: float) -> float:
    """The price over sigma^2, 2 (1 + c) / c [ln((1 - p) / p) + ln(1 + c) / 2], at which a
    latent that is on with probability p (``kept_share``) and then has a Gaussian amplitude of
    variance c sigma^2 (c: ``signal_to_noise``) is as likely on as off, given a least-squares
    contribution whose square is that price: the Bayes threshold George & Foster's calibration
    estimates. p is kept inside (0, 1/2] and c at least 1e-3 (no signal: a price past any)."""
    p = min(max(kept_share, 1e-12), 0.5)
    c = max(signal_to_noise, 1e-3)
    return 2 * (1 + c) / c * (math.log((1 - p) / p) + 0.5 * math.log1p(c))


class Calibration(NamedTuple):
    """Where ``calibrated_price``'s fixed point settled: the price in squared input units, the
    noise level sigma^2, the share of latents kept p and the signal-to-noise c."""

    price: float
    level: float
    kept_share: float
    signal_to_noise: float


def calibrated_price(pre: torch.Tensor, W_dec: torch.Tensor, z: torch.Tensor) -> Calibration:
    """The fixed point of the price ``refit_kept`` keeps at and the calibration of what it keeps:
    sigma^2 the pooled residual per dimension at the counts kept, p the share of latents kept,
    c sigma^2 the kept latents' mean squared contribution (amplitude times row norm) less
    sigma^2; started from ``risk_pooled``'s level at 2 ln h. Where nothing is kept the price
    stays where it was."""
    d, h = z.shape[-1], pre.shape[-1]
    norms = torch.linalg.vector_norm(W_dec, dim=-1)
    level = pooled_level(pre, W_dec, z)
    found = Calibration(2 * math.log(h) * level, level, 0.0, 0.0)  # nothing measured yet
    for _ in range(POOLED_ITERATIONS):
        amplitudes, residual = refit_kept(pre, W_dec, z, found.price)
        kept = amplitudes != 0
        if not bool(kept.any()):
            break
        k = kept.sum(-1)
        level = float(residual.sum() / (d - k).clamp_min(1).double().sum())
        contribution = float((amplitudes * norms)[kept].double().pow(2).mean())
        share, snr = float(k.double().mean()) / h, contribution / level - 1
        settled = calibrated_factor(share, snr) * level
        done = abs(settled - found.price) <= REFIT_TOLERANCE * found.price
        found = Calibration(settled, level, share, snr)
        if done:
            break
    return found


def risk_calibrated(
    pre: torch.Tensor, W_dec: torch.Tensor, z: torch.Tensor, price: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each token's re-fit amplitudes (``refit_kept``) at ``price``, in squared input units, or
    where None at the batch's ``calibrated_price`` (found on its first ``REFIT_LEVEL_TOKENS``
    tokens). Returns ``(acts, kept per token, the price used)``; gradients as ``risk_refit``'s."""
    return refit_at_price(pre, W_dec, z, price, lambda *first: calibrated_price(*first).price)


def refit_at_price(pre, W_dec, z, price, find_price):
    """``refit_code`` at ``price``, or where None at ``find_price(pre, W_dec, z)`` on the batch's
    first ``REFIT_LEVEL_TOKENS`` tokens: ``(acts, kept per token, the price used)``."""
    first = slice(0, REFIT_LEVEL_TOKENS)
    if price is None:
        price = find_price(pre.detach()[first], W_dec.detach(), z.detach()[first])
    acts, k = refit_code(pre, W_dec, z, float(price))
    return acts, k, torch.as_tensor(float(price), dtype=torch.float64)


def tail_probability(h: int) -> float:
    """P(|N(0, 1)| > sqrt(2 ln h)): how often a Gaussian null contribution passes the risk
    price 2 ln h sigma^2 (2.0e-4 at h = 1,024)."""
    return math.erfc(math.sqrt(math.log(h)))


@torch.no_grad()
def residual_projections(amplitudes: torch.Tensor, W_dec: torch.Tensor, z: torch.Tensor):
    """The squared projections [N, h] of each token's residual, z - amplitudes @ W_dec, onto
    every unit row: what each latent would contribute alone on top of the reading."""
    residual = z.float() - amplitudes.float() @ W_dec.float()
    unit = torch.nn.functional.normalize(W_dec.float(), dim=-1)
    return (residual @ unit.T).pow(2)


def left_out_projections(amplitudes: torch.Tensor, W_dec: torch.Tensor, z: torch.Tensor):
    """``residual_projections`` [M] of the rows each token left out (amplitude zero)."""
    return residual_projections(amplitudes, W_dec, z)[amplitudes == 0]


def tail_quantile(projections: torch.Tensor, h: int) -> float:
    """The (1 - ``tail_probability(h)``) quantile of ``projections`` (one dimension, not
    empty): the share of them above it is the chance a Gaussian null passes 2 ln h sigma^2."""
    rank = math.ceil((1 - tail_probability(h)) * projections.numel())
    return float(projections.kthvalue(min(projections.numel(), max(1, rank))).values)


@torch.no_grad()
def tail_price(pre: torch.Tensor, W_dec: torch.Tensor, z: torch.Tensor) -> float:
    """The fixed point of the price ``refit_kept`` keeps at and the (1 - ``tail_probability``)
    quantile of ``left_out_projections`` at what it keeps, started from ``risk_pooled``'s level
    at 2 ln h. Under Gaussian noise it settles a little under 2 ln h sigma^2 (0.89 of it on an
    orthonormal test world): the few null latents that pass the price are kept, so leave the
    pool it is read from."""
    h = pre.shape[-1]
    price = 2 * math.log(h) * pooled_level(pre, W_dec, z)
    for _ in range(POOLED_ITERATIONS):
        amplitudes, _ = refit_kept(pre, W_dec, z, price)
        null = left_out_projections(amplitudes, W_dec, z)
        if null.numel() == 0:  # every row kept by every token: nothing left out to read
            break
        settled = tail_quantile(null, h)
        done = abs(settled - price) <= REFIT_TOLERANCE * price
        price = settled
        if done:
            break
    return price


def risk_tail(pre, W_dec, z, price: float | None = None):
    """As ``risk_calibrated``, at the batch's ``tail_price`` where ``price`` is None."""
    return refit_at_price(pre, W_dec, z, price, tail_price)


def log_bisection(excess, low: float, high: float, steps: int) -> float:
    """Where ``excess(t)`` turns from positive (below) to not (above) in [low, high], found by
    ``steps`` halvings in log t: prices span orders of magnitude."""
    for _ in range(steps):
        middle = math.sqrt(low * high)
        low, high = (middle, high) if excess(middle) > 0 else (low, middle)
    return math.sqrt(low * high)
