"""The loss terms of an SAE's forward pass, under either loss convention (see ``SAEOutput``)."""

from __future__ import annotations

import torch

from .afa import afa_norm


def paper_losses(x_n, recon_n, f_norm, aux_recon, standardized: bool):
    """The paper's terms (means over elements and tokens), over s: 1 on standardized inputs,
    else the batch's mean squared element. Returns (mse, afa, aux, s, s)."""
    if standardized:
        scale = x_n.new_ones(())
    else:
        scale = x_n.detach().pow(2).mean().clamp_min(1e-12)
    mse_loss = (recon_n - x_n).pow(2).mean() / scale
    afa_loss = (f_norm - afa_norm(x_n)).pow(2).mean() / scale
    aux_loss = recon_n.new_zeros(())
    if aux_recon is not None:
        # as in the paper's code, the residual keeps its gradient
        aux_loss = (aux_recon - (x_n - recon_n)).pow(2).mean() / scale
    return mse_loss, afa_loss, aux_loss, scale, scale


def v01_losses(x_n, recon_n, f_norm, aux_recon):
    """hf-topafa 0.1's terms: sums over the batch's total squared norm.
    Returns (mse, afa, aux, total squared norm, the residual's squared norm)."""
    total_sq = x_n.detach().pow(2).sum().clamp_min(1e-12)
    mse_loss = (recon_n - x_n).pow(2).sum() / total_sq
    afa_loss = (f_norm - afa_norm(x_n)).pow(2).sum() / total_sq
    aux_loss, aux_sq = recon_n.new_zeros(()), recon_n.new_ones(())
    if aux_recon is not None:
        # Aux-k (Gao et al.): the top dead features model what the live ones missed.
        residual = (x_n - recon_n).detach()
        aux_sq = residual.pow(2).sum().clamp_min(1e-12)
        aux_loss = (aux_recon - residual).pow(2).sum() / aux_sq
    return mse_loss, afa_loss, aux_loss, total_sq, aux_sq


def matryoshka_loss(x_n, acts, W_dec, b_dec, prefixes, loss_scale, paper: bool) -> torch.Tensor:
    """The mean reconstruction loss of the Matryoshka ``prefixes`` (increasing), each decoding
    alone, in the units of the convention's MSE (a mean over elements under the paper's, else a
    sum). Each prefix's reconstruction adds the next block of rows to the one before, so every
    decoder row is multiplied once."""
    terms, recon, done = [], b_dec.expand_as(x_n), 0
    for m in prefixes:
        recon = recon + acts[:, done:m] @ W_dec[done:m]
        error = (recon - x_n).pow(2)
        terms.append((error.mean() if paper else error.sum()) / loss_scale)
        done = m
    return torch.stack(terms).mean()


def reconstruction_loss(mse_loss, matryoshka, levels: int):
    """The loss's reconstruction term: ``mse_loss``, or with Matryoshka levels the mean over
    the whole code and its ``levels`` prefixes (``matryoshka`` their mean loss)."""
    if matryoshka is None:
        return mse_loss
    return (mse_loss + levels * matryoshka) / (levels + 1)
