"""Encoding and decoding through the active features only.

A sparse code is a list of (token, feature) pairs: ``rows`` and ``cols`` (int64, sorted by token)
with one value each. With L0 << d_sae, the decoder product, its backward and the encoder's weight
gradient then cost O(pairs * d_in) instead of O(tokens * d_sae * d_in): every one of them is an
``embedding_bag`` sum, the decoder's over the token's features, the gradients' over each feature's
tokens. Only the encoder's forward product stays dense (every pre-activation must be seen to rank
them).

Both functions also take an optional dense *block*: all tokens' values on a few columns
(``block_cols``, e.g. the dead features of the aux-k loss). Its gradients are added into the same
weight gradients, so a weight never gets two full-size gradient tensors to sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Above this fraction of active (token, feature) pairs, dense matrix products are faster than
# gathering rows (measured on CPU at d_in=576, d_sae=4608: break-even near 10%).
MAX_SPARSE_DENSITY = 1 / 16
# The aux-k loss gathers pairs when aux_k is at most this share of the dead features; otherwise it
# takes all dead columns as a dense block (cheaper while few features are dead).
MAX_AUX_DENSITY = 1 / 8


def bag_offsets(group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Start of each group in a list sorted by group id (an empty group starts where the next does)."""
    counts = torch.bincount(group, minlength=n_groups)
    offsets = torch.zeros(n_groups, dtype=torch.long, device=group.device)
    offsets[1:] = counts.cumsum(0)[:-1]
    return offsets


def gather(dense: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """dense[rows, cols] through a flat index (faster than two-tensor advanced indexing)."""
    return dense.reshape(-1).take(rows * dense.shape[-1] + cols)


def scatter_dense(
    rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """A dense [N, d_sae] tensor, zero except values at (rows, cols); differentiable in values."""
    return _ScatterDense.apply(rows * shape[1] + cols, values, shape)


def encode_pairs(
    x_n: torch.Tensor,
    b_dec: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    pre: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    block_cols: torch.Tensor | None = None,
):
    """The pre-activations ``pre[rows, cols]``, differentiable in x_n, b_dec, W_enc and b_enc.

    ``pre`` = ReLU((x_n - b_dec) W_enc + b_enc), computed without autograd; only the gathered
    entries take part in the backward pass, so its cost grows with the pairs, not with d_sae.
    With ``block_cols`` returns ``(values, pre[:, block_cols])``, both differentiable.
    """
    block = (
        torch.empty(0, dtype=torch.long, device=pre.device) if block_cols is None else block_cols
    )
    values, dense = _EncodePairs.apply(x_n, b_dec, W_enc, b_enc, pre.detach(), rows, cols, block)
    return values if block_cols is None else (values, dense)


def encode_dense(
    x_n: torch.Tensor,
    b_dec: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    kept: torch.Tensor,
    block: torch.Tensor | None = None,
    block_cols: torch.Tensor | None = None,
):
    """``kept`` (kept pre-activations [N, d_sae], zero elsewhere) made differentiable in x_n,
    b_dec, W_enc and b_enc, for the dense route of a rule that keeps a subset of the ReLU
    pre-activations (top-AFA, TopK, BatchTopK).

    The encoder product ran without autograd; the backward is two products, not three:
    b_dec's gradient is ``-W_enc @ sum_tokens(g)``, so the input gradient [N, d_in] is only
    formed when x_n itself needs one. With ``block`` (= pre[:, block_cols], e.g. the dead
    features of the aux-k loss) returns ``(kept, block)``, both differentiable; the block's
    gradient joins the same weight-gradient product.
    """
    if block is None:
        empty = torch.empty(0, dtype=torch.long, device=kept.device)
        out, _ = _EncodeDense.apply(
            x_n, b_dec, W_enc, b_enc, kept.detach(), kept.new_zeros(kept.shape[0], 0), empty
        )
        return out
    return _EncodeDense.apply(x_n, b_dec, W_enc, b_enc, kept.detach(), block.detach(), block_cols)


class _EncodeDense(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_n, b_dec, W_enc, b_enc, kept, block, block_cols):
        ctx.save_for_backward(x_n, b_dec, W_enc, kept, block, block_cols)
        return kept.view_as(kept), block.view_as(block)

    @staticmethod
    def backward(ctx, grad_kept, grad_block):
        x_n, b_dec, W_enc, kept, block, block_cols = ctx.saved_tensors
        need_x, need_b_dec, need_W, need_b_enc = ctx.needs_input_grad[:4]
        # ReLU's derivative and the selection: a gradient only where a kept value is positive
        # (where, not a float mask times the gradient: one [N, d_sae] temporary fewer)
        g = torch.where(kept > 0, grad_kept, 0).to(W_enc.dtype)
        if block_cols.numel() and grad_block is not None:
            g.index_add_(1, block_cols, torch.where(block > 0, grad_block, 0).to(W_enc.dtype))
        grad_x = grad_b_dec = grad_W = grad_b_enc = None
        if need_b_enc or need_b_dec:
            summed = g.sum(0)
            grad_b_enc = summed if need_b_enc else None
            if need_b_dec:
                grad_b_dec = -(W_enc @ summed)
        if need_W:
            grad_W = (x_n - b_dec).to(W_enc.dtype).t() @ g
        if need_x:
            grad_x = (g @ W_enc.t()).to(x_n.dtype)
        return grad_x, grad_b_dec, grad_W, grad_b_enc, None, None, None


def decode_pairs(
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    W_dec: torch.Tensor,
    n_tokens: int,
    block: torch.Tensor | None = None,
    block_cols: torch.Tensor | None = None,
):
    """sum over each token's pairs of value * W_dec[feature] -> [n_tokens, d_in] (no bias).

    With a dense ``block`` [N, len(block_cols)] also returns ``block @ W_dec[block_cols]``.
    """
    values = values.to(W_dec.dtype)
    if block is None:
        empty = torch.empty(0, dtype=torch.long, device=W_dec.device)
        out, _ = _DecodePairs.apply(
            values, W_dec, rows, cols, n_tokens, W_dec.new_zeros(0, 0), empty
        )
        return out
    return _DecodePairs.apply(
        values, W_dec, rows, cols, n_tokens, block.to(W_dec.dtype), block_cols
    )


class _ScatterDense(torch.autograd.Function):
    @staticmethod
    def forward(ctx, flat, values, shape):
        ctx.save_for_backward(flat)
        out = values.new_zeros(shape[0] * shape[1])
        out[flat] = values
        return out.view(shape)

    @staticmethod
    def backward(ctx, grad):
        (flat,) = ctx.saved_tensors
        return None, grad.reshape(-1).take(flat), None


class _EncodePairs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_n, b_dec, W_enc, b_enc, pre, rows, cols, block_cols):
        values = gather(pre, rows, cols)
        block = pre.index_select(1, block_cols)
        ctx.save_for_backward(x_n, b_dec, W_enc, values, rows, cols, block, block_cols)
        return values, block

    @staticmethod
    def backward(ctx, grad_values, grad_block):
        x_n, b_dec, W_enc, values, rows, cols, block, block_cols = ctx.saved_tensors
        n_tokens, d_sae = x_n.shape[0], W_enc.shape[1]
        # ReLU's derivative: 0 where the pre-activation is 0, as torch.relu has it
        g = (grad_values * (values > 0)).to(W_enc.dtype)
        g_block = (grad_block * (block > 0)).to(W_enc.dtype) if block_cols.numel() else None
        grad_x = grad_b_dec = grad_W = grad_b_enc = None
        need_x, need_b_dec, need_W, need_b_enc = ctx.needs_input_grad[:4]
        centered = (x_n - b_dec).to(W_enc.dtype)
        if need_b_enc or need_b_dec:
            summed = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, cols, g)
            if g_block is not None:
                summed.index_add_(0, block_cols, g_block.sum(0))
            grad_b_enc = summed if need_b_enc else None
            if need_b_dec:
                grad_b_dec = -(W_enc @ summed)
        if need_W:
            # grad W_enc[:, j] = sum over the pairs of feature j of g * (x_n - b_dec)[token]
            order = torch.argsort(cols, stable=True)
            grad_W_t = F.embedding_bag(
                rows[order],
                centered,
                bag_offsets(cols, d_sae),
                mode="sum",
                per_sample_weights=g[order],
            )
            if g_block is not None:
                grad_W_t.index_add_(0, block_cols, g_block.t() @ centered)
            grad_W = grad_W_t.t()
        if need_x:
            grad_x = F.embedding_bag(
                cols,
                W_enc.t().contiguous(),
                bag_offsets(rows, n_tokens),
                mode="sum",
                per_sample_weights=g,
            )
            if g_block is not None:
                grad_x = grad_x + g_block @ W_enc.index_select(1, block_cols).t()
            grad_x = grad_x.to(x_n.dtype)
        return grad_x, grad_b_dec, grad_W, grad_b_enc, None, None, None, None


class _DecodePairs(torch.autograd.Function):
    """embedding_bag forward; a backward that walks the pairs feature by feature.

    Grouped by feature, each W_dec row is read once while the (small) output gradient is
    gathered: both gradients then come from one embedding_bag over features, its output for
    W_dec and its per-sample-weight gradient for the values, about 3x faster on CPU than
    embedding_bag's own backward.
    """

    @staticmethod
    def forward(ctx, values, W_dec, rows, cols, n_tokens, block, block_cols):
        ctx.save_for_backward(values, W_dec, rows, cols, block, block_cols)
        offsets = bag_offsets(rows, n_tokens)
        out = F.embedding_bag(cols, W_dec, offsets, mode="sum", per_sample_weights=values)
        if block_cols.numel():
            return out, block @ W_dec.index_select(0, block_cols)
        return out, W_dec.new_zeros(0, W_dec.shape[1])

    @staticmethod
    def backward(ctx, grad_out, grad_block_out):
        values, W_dec, rows, cols, block, block_cols = ctx.saved_tensors
        need_values, need_W = ctx.needs_input_grad[:2]
        # under autocast the forward's block product came out bf16: the gradients follow W_dec
        grad_out = grad_out.to(W_dec.dtype).contiguous()
        if grad_block_out is not None:
            grad_block_out = grad_block_out.to(W_dec.dtype)
        order = torch.argsort(cols, stable=True)
        sorted_values = values[order].detach().requires_grad_(need_values)
        with torch.enable_grad():
            # grad W_dec[j] = sum over the pairs of feature j of value * grad_out[token]
            grad_W = F.embedding_bag(
                rows[order],
                grad_out,
                bag_offsets(cols, W_dec.shape[0]),
                mode="sum",
                per_sample_weights=sorted_values,
            )
            grad_values = None
            if need_values:
                # d/d value of <grad_W, W_dec> = W_dec[feature] . grad_out[token]
                (grad_sorted,) = torch.autograd.grad(grad_W, sorted_values, W_dec)
                grad_values = torch.empty_like(grad_sorted)
                grad_values[order] = grad_sorted
        grad_W = grad_W.detach()
        grad_block = None
        if block_cols.numel() and grad_block_out is not None:
            grad_W.index_add_(0, block_cols, block.t() @ grad_block_out)
            if ctx.needs_input_grad[5]:
                grad_block = grad_block_out @ W_dec.index_select(0, block_cols).t()
        return grad_values, grad_W if need_W else None, None, None, None, grad_block, None
