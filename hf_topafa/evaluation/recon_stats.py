"""Reconstruction error accumulated batch by batch: FVU from running sums (so a long evaluation
needs no stored activations), and per-token normalized MSE and cosine for their quantiles."""

from __future__ import annotations

import math

import torch

from .eval_report import quantiles


class ReconStats:
    """Sums for FVU plus per-token normalized MSE and cosine, in one space."""

    def __init__(self):
        self.sq_err = 0.0
        self.sq_norm = 0.0
        self.sum_x: torch.Tensor | None = None
        self.n = 0
        self.nmse: list[torch.Tensor] = []
        self.cos: list[torch.Tensor] = []

    def update(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        x, x_hat = x.double(), x_hat.double()
        err = (x - x_hat).pow(2).sum(-1)
        norm_sq = x.pow(2).sum(-1)
        self.sq_err += float(err.sum())
        self.sq_norm += float(norm_sq.sum())
        self.sum_x = x.sum(0) if self.sum_x is None else self.sum_x + x.sum(0)
        self.n += len(x)
        self.nmse.append((err / norm_sq.clamp_min(1e-30)).float())
        self.cos.append(torch.nn.functional.cosine_similarity(x, x_hat, dim=-1, eps=1e-12).float())

    def result(self) -> dict:
        centred = self.sq_norm - float(self.sum_x.pow(2).sum()) / self.n
        fvu = self.sq_err / centred if centred > 0 else math.nan
        nmse = torch.cat(self.nmse)
        return {
            "normalized_mse": float(nmse.mean()),
            "normalized_mse_quantiles": quantiles(nmse),
            "fvu": fvu,
            "explained_variance": 1 - fvu,
            "total_normalized_mse": self.sq_err / self.sq_norm,
            "cosine_similarity": float(torch.cat(self.cos).mean()),
        }
