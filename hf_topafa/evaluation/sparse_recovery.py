"""How many true features a decoder could recover at all, read on a perfect dictionary.

A reading of a trained dictionary can only count what its decoder lifts out of the interference.
Giving the decoder the world's own features as the dictionary (``ground_truth.oracle_sae``) and
the noise level from the truth (the energy of the features the width does not hold, per
dimension) separates what a world hides from what a dictionary or a reading misses:

- ``clearing_price``: the held features whose own magnitude pays the universal price
  2 ln h sigma^2 against that noise alone: what a reading at that price could keep at most if
  the held features did not interfere with one another.
- ``nonnegative_lasso``: the l1 decoder at the universal level sigma sqrt(2 ln h) (per unit of
  row norm), solved jointly over all rows, so one feature's interference is not read as another.
- ``pursuit_path``: orthogonal matching pursuit, one row per step with the code refitted by least
  squares on the rows chosen so far; the count along it is risk inflation's at the known level.
"""

from __future__ import annotations

import math

import torch

LASSO_ITERATIONS = 300  # FISTA steps; the kept set settles well before on the worlds read here


def universal_price(width: int, sigma2: float) -> float:
    """2 ln h sigma^2: what one of h candidate features must explain to be named at noise level
    sigma^2 per dimension (Donoho & Johnstone's universal threshold, squared)."""
    return 2 * math.log(width) * sigma2


def unheld_noise(codes: torch.Tensor, held: torch.Tensor, d: int) -> float:
    """The energy per dimension of the true features a width does not hold (``held``, a bool mask
    over the features), pooled over the samples of ``codes`` [N, features]: the noise left when
    every held feature is read perfectly."""
    return float(codes[:, ~held].double().pow(2).sum(-1).mean()) / d


def clearing_price(codes: torch.Tensor, held: torch.Tensor, sigma2: float) -> torch.Tensor:
    """Per sample, how many held features are active with magnitude^2 >= the universal price at
    ``sigma2`` for a dictionary of the held width."""
    active = codes[:, held]
    price = universal_price(int(held.sum()), sigma2)
    return ((active > 0) & (active.pow(2) >= price)).sum(-1)


@torch.no_grad()
def nonnegative_lasso(
    W_dec: torch.Tensor, z: torch.Tensor, level: float, iterations: int = LASSO_ITERATIONS
) -> torch.Tensor:
    """f [N, h] >= 0 minimizing 1/2 ||z - f W_dec||^2 + level sum_i f_i ||w_i|| (FISTA): the
    penalty per unit of each row's contribution, so ``level`` is in z's units."""
    W = W_dec.double()
    z = z.double()
    norms = W.norm(dim=-1)
    step = 1 / float(torch.linalg.matrix_norm(W, ord=2)) ** 2
    gram, target = W @ W.T, z @ W.T
    f = torch.zeros(z.shape[0], W.shape[0], dtype=torch.float64, device=z.device)
    momentum, t = f.clone(), 1.0
    for _ in range(iterations):
        new = torch.relu(momentum - step * (momentum @ gram - target + level * norms))
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        momentum = new + ((t - 1) / t_next) * (new - f)
        f, t = new, t_next
    return f.to(W_dec.dtype)


@torch.no_grad()
def pursuit_path(W_dec: torch.Tensor, z: torch.Tensor, steps: int):
    """(RSS [N, steps + 1], chosen rows [N, steps]): orthogonal matching pursuit. Each step takes
    the row not yet chosen whose unit direction correlates most (positively) with the residual,
    then refits the code on all chosen rows by least squares; column k of RSS is the residual
    energy after k rows, column 0 ||z||^2."""
    W = W_dec.double()
    z = z.double()
    n, h = z.shape[0], W.shape[0]
    unit = W / W.norm(dim=-1, keepdim=True)
    rows = torch.arange(n, device=z.device)
    residual = z.clone()
    rss = torch.empty(n, steps + 1, dtype=torch.float64, device=z.device)
    rss[:, 0] = residual.pow(2).sum(-1)
    chosen = torch.empty(n, steps, dtype=torch.long, device=z.device)
    taken = torch.zeros(n, h, dtype=torch.bool, device=z.device)
    for k in range(steps):
        score = (residual @ unit.T).masked_fill(taken, -math.inf)
        best = score.argmax(-1)
        taken[rows, best] = True
        chosen[:, k] = best
        picked = W[chosen[:, : k + 1]]  # [N, k + 1, d]
        gram = picked @ picked.transpose(1, 2)
        gram += 1e-9 * torch.eye(k + 1, dtype=gram.dtype, device=z.device)
        code = torch.linalg.solve(gram, picked @ z.unsqueeze(-1))  # [N, k + 1, 1]
        residual = z - (code.transpose(1, 2) @ picked).squeeze(1)
        rss[:, k + 1] = residual.pow(2).sum(-1)
    return rss, chosen
