"""Absorption read from a trained decoder alone, and the feature directions without it.

Where features form a hierarchy (a child fires only with its parent), a TopK latent for a child
learns the child's direction plus its parent's (feature absorption), and so does each sibling's.
The siblings' rows then meet at cosines far above what quasi-orthogonal directions reach by
chance, and the direction they share is the parent's. ``unabsorbed_directions`` finds each
row's above-chance neighbours, takes the normalized sum of their rows as the shared direction,
and returns the row with that direction projected out: an estimate of the latent's own feature
direction. No truth and no tuned coefficient: the level is ``chance_coherence``.

The encoder, the code and the reconstruction are untouched; only what a latent is read to point
at changes (what SAELens's evaluator matches to the true features). On the synthetic worlds
this is measured in ``results/synthbench`` ("Absorbed directions").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def chance_coherence(d_sae: int, d_in: int) -> float:
    """The largest |cosine| two of ``d_sae`` random unit vectors in ``d_in`` dimensions reach by
    chance: sqrt(2 ln(d_sae²) / d_in), a Gaussian tail bound over the d_sae² pairs. A cosine above
    it says two rows share a direction."""
    if d_sae < 2 or d_in < 1:
        raise ValueError(f"need at least 2 rows and 1 dimension, not {d_sae} x {d_in}")
    return math.sqrt(2.0 * math.log(d_sae**2) / d_in)


@dataclass
class UnabsorbedDirections:
    """Per decoder row: its direction without the shared one (unit rows [h, d]), the shared
    direction (unit, zero where the row has no above-chance neighbour), how much of the row it
    was (the cosine between them), and how many neighbours the row has."""

    directions: torch.Tensor
    shared: torch.Tensor
    shared_cosine: torch.Tensor
    neighbours: torch.Tensor
    level: float

    @property
    def changed(self) -> torch.Tensor:
        """[h] bool: rows that had an above-chance neighbour."""
        return self.neighbours > 0


@torch.no_grad()
def unabsorbed_directions(W_dec: torch.Tensor, level: float | None = None) -> UnabsorbedDirections:
    """Each row of ``W_dec`` [h, d] without the direction it shares with the rows whose cosine
    with it exceeds ``level`` (default ``chance_coherence(h, d)``). Rows with no such neighbour
    keep their own direction."""
    rows = W_dec.detach().float()
    unit = rows / torch.linalg.vector_norm(rows, dim=-1, keepdim=True).clamp_min(1e-12)
    level = chance_coherence(*unit.shape) if level is None else float(level)
    near = (unit @ unit.T) > level
    near.fill_diagonal_(False)
    neighbours = near.sum(-1)
    summed = near.to(unit.dtype) @ unit
    shared = summed / torch.linalg.vector_norm(summed, dim=-1, keepdim=True).clamp_min(1e-12)
    cosine = (unit * shared).sum(-1) * (neighbours > 0)
    own = unit - cosine[:, None] * shared
    left = torch.linalg.vector_norm(own, dim=-1, keepdim=True)
    own = torch.where(left > 1e-6, own / left.clamp_min(1e-12), unit)  # a row that is all shared
    return UnabsorbedDirections(own, shared, cosine, neighbours, level)
