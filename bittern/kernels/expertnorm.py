"""RMSNorm with each row's own expert norm weight + int8 quantization, for MoE rows sorted by expert.

The mixture-of-experts path's `actquant` / `sharednorm`: rows of x sorted by expert (counts[e]
of them for expert e), each normalized once (float32 statistics, cast back to x's dtype) and
scaled by its expert's norm weight, for one or two sets of norm weights (gate's and up's read
the same x), then quantized per row to int8. One pass reads x once and writes each set's codes
and s_x. The backward reads x once with each set's output gradient and writes the summed input
gradient (float32, rounded once) and each expert's norm-weight gradient. A program holds a
tile of rows of one expert (`grouped_ternary.tile_map`), so it loads that expert's norm weight
once and sums its weight gradient in registers. Each row's result is `actquant`'s, from the
same jit helpers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bittern.kernels.actquant import (
    load_normed_rows,
    norm_input_grad,
    norm_quantize_store,
    normalize_rows,
    tile_rows,
)
from bittern.kernels.common import INTERPRET, launch, round_to, row_warps, tl_dtype
from bittern.kernels.grouped_ternary import BLOCK_M, tile_map
from bittern.quant.core import quantize_activations

MAX_PARTS = 2
TILE = BLOCK_M  # rows per program: the grouped GEMM's row tiles, so one tile map serves both

# ---- reference -------------------------------------------------------------------------


def rows_of_experts(counts: torch.Tensor, rows: int) -> torch.Tensor:
    """The expert of each of `rows` rows sorted by expert (int64)."""
    experts = torch.arange(counts.numel(), device=counts.device)
    return torch.repeat_interleave(experts, counts, output_size=rows)


def rmsnorm_experts_reference(
    x: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, M, K) RMSNorm of each row with its expert's weight weights[p, e] (P, E, K), and rstd (M,)."""
    rows_expert = rows_of_experts(counts.to(x.device), x.shape[0])
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    xn = (xf * rstd).to(x.dtype)
    return torch.stack([w[rows_expert] * xn for w in weights]), rstd.squeeze(-1)


def rmsnorm_quant_experts_reference(
    x: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes (P, M, K) int8, s_x (P, M) and rstd (M,) of `rmsnorm_experts_reference` + the quantizer."""
    y, rstd = rmsnorm_experts_reference(x, weights, counts, eps)
    quantized = [quantize_activations(yp) for yp in y]
    codes = torch.stack([q[0] for q in quantized])
    return codes, torch.stack([q[1].reshape(-1) for q in quantized]), rstd


def rmsnorm_experts_backward_reference(
    grads: torch.Tensor, x: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dweights (P, E, K)) by autograd through `rmsnorm_experts_reference` (the quantizer: STE)."""
    x = x.detach().requires_grad_(True)
    weights = weights.detach().requires_grad_(True)
    y, _ = rmsnorm_experts_reference(x, weights, counts, eps)
    dx, dw = torch.autograd.grad(y, (x, weights), grads.to(y.dtype))
    return dx, dw


# ---- kernels ---------------------------------------------------------------------------


@triton.jit
def _tile_rows(TILE_EXPERT, TILE_ROW, ROW_END, t, i, K, ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """Expert (0 for a spare tile), rows, row mask, element mask and offsets of tile t's i-th block."""
    e = tl.load(TILE_EXPERT + t)
    end = tl.where(e >= 0, tl.load(ROW_END + tl.maximum(e, 0)), 0)  # a spare tile has no rows
    rows = tl.load(TILE_ROW + t).to(tl.int64) + i * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_K)
    rmask = rows < end
    mask = rmask[:, None] & (cols[None, :] < K)
    return tl.maximum(e, 0), rows, rmask, mask, rows[:, None] * K + cols[None, :]


@triton.jit
def _experts_fwd_kernel(
    X,
    W0,
    W1,
    Q0,
    Q1,
    S0,
    S1,
    RSTD,
    TILE_EXPERT,
    TILE_ROW,
    ROW_END,
    K,
    eps,
    PARTS: tl.constexpr,
    Y_DTYPE: tl.constexpr,
    ROWS: tl.constexpr,
    ITERS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    t = tl.program_id(0)
    for i in range(ITERS):
        e, rows, rmask, mask, offs = _tile_rows(TILE_EXPERT, TILE_ROW, ROW_END, t, i, K, ROWS, BLOCK_K)
        xf = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        rstd, xn = normalize_rows(xf, K, eps, X.dtype.element_ty, INTERPRET)
        tl.store(RSTD + rows, rstd, mask=rmask)
        cols = tl.arange(0, BLOCK_K)  # expert e's norm weight is row e of W0 (W1)
        norm_quantize_store(xn, W0 + e * K, Q0, S0, rows, cols, offs, mask, rmask, K, Y_DTYPE, INTERPRET)
        if PARTS == 2:
            norm_quantize_store(xn, W1 + e * K, Q1, S1, rows, cols, offs, mask, rmask, K, Y_DTYPE, INTERPRET)


@triton.jit
def _experts_bwd_kernel(
    DY0,
    DY1,
    X,
    W0,
    W1,
    RSTD,
    DX,
    DW_PART,
    TILE_EXPERT,
    TILE_ROW,
    ROW_END,
    K,
    tiles,
    PARTS: tl.constexpr,
    ROWS: tl.constexpr,
    ITERS: tl.constexpr,
    Y_DTYPE: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    t = tl.program_id(0)
    cols = tl.arange(0, BLOCK_K)
    cmask = cols < K
    e = tl.maximum(tl.load(TILE_EXPERT + t), 0)
    w0 = tl.load(W0 + e * K + cols, mask=cmask, other=0.0).to(tl.float32)
    w1 = tl.load(W1 + e * K + cols, mask=cmask, other=0.0).to(tl.float32)
    dw0 = tl.zeros([BLOCK_K], dtype=tl.float32)
    dw1 = tl.zeros([BLOCK_K], dtype=tl.float32)
    for i in range(ITERS):
        _, rows, rmask, mask, offs = _tile_rows(TILE_EXPERT, TILE_ROW, ROW_END, t, i, K, ROWS, BLOCK_K)
        xf, rstd, xn = load_normed_rows(X, RSTD, rows, rmask, mask, offs, X.dtype.element_ty, INTERPRET)
        dy = tl.load(DY0 + offs, mask=mask, other=0.0).to(tl.float32)
        dw0 += tl.sum(dy * xn, axis=0)
        dx = norm_input_grad(dy, w0, xf, rstd, K, X.dtype.element_ty, Y_DTYPE, INTERPRET)
        if PARTS == 2:
            dy = tl.load(DY1 + offs, mask=mask, other=0.0).to(tl.float32)
            dw1 += tl.sum(dy * xn, axis=0)
            dx += norm_input_grad(dy, w1, xf, rstd, K, X.dtype.element_ty, Y_DTYPE, INTERPRET)
        tl.store(DX + offs, round_to(dx, DX.dtype.element_ty, INTERPRET), mask=mask)
    part = DW_PART + t.to(tl.int64) * K + cols
    tl.store(part, dw0, mask=cmask)  # a spare tile's part is 0
    if PARTS == 2:
        tl.store(part + tiles * K, dw1, mask=cmask)


# ---- launchers -------------------------------------------------------------------------


def _layout(x: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor, tiles):
    assert x.dim() == 2 and x.is_contiguous() and weights.dim() == 3 and 1 <= weights.shape[0] <= MAX_PARTS
    assert weights.shape[1] == counts.numel() and weights.shape[2] == x.shape[1]
    if tiles is None:
        tiles = tile_map(counts.to(x.device), x.shape[0], TILE)
    block = triton.next_power_of_2(x.shape[1])
    rows = min(TILE, tile_rows(block, 2048))
    return tiles, block, rows


def rmsnorm_quant_experts(
    x: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor, eps: float, tiles=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kernel version of `rmsnorm_quant_experts_reference` for a contiguous (M, K) x.

    `tiles`: `grouped_ternary.tile_map(counts, M, TILE)` if the caller has it.
    """
    tiles, block, rows = _layout(x, weights, counts, tiles)
    parts, (M, K) = weights.shape[0], x.shape
    weights = weights.contiguous()
    codes = torch.empty((parts, M, K), dtype=torch.int8, device=x.device)
    scales = torch.empty((parts, M), dtype=torch.float32, device=x.device)
    rstd = torch.empty(M, dtype=torch.float32, device=x.device)
    if M == 0:
        return codes, scales, rstd
    last = parts - 1
    launch(_experts_fwd_kernel)[(tiles[0].numel(),)](
        x,
        weights[0],
        weights[last],
        codes[0],
        codes[last],
        scales[0],
        scales[last],
        rstd,
        *tiles,
        K,
        eps,
        PARTS=parts,
        Y_DTYPE=tl_dtype(torch.promote_types(weights.dtype, x.dtype)),
        ROWS=rows,
        ITERS=TILE // rows,
        BLOCK_K=block,
        INTERPRET=INTERPRET,
        num_warps=row_warps(rows * block),
    )
    return codes, scales, rstd


def rmsnorm_experts_backward(
    grads: torch.Tensor,
    x: torch.Tensor,
    weights: torch.Tensor,
    counts: torch.Tensor,
    rstd: torch.Tensor,
    tiles=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel version of `rmsnorm_experts_backward_reference`; `rstd` is the forward's, grads (P, M, K)."""
    tiles, block, rows = _layout(x, weights, counts, tiles)
    parts, (M, K) = weights.shape[0], x.shape
    assert grads.shape == (parts, M, K)
    grads, weights = grads.contiguous(), weights.contiguous()
    dx = torch.empty_like(x)
    if M == 0:
        return dx, torch.zeros_like(weights)
    n_tiles = tiles[0].numel()
    part = torch.empty((parts, n_tiles, K), dtype=torch.float32, device=x.device)
    last = parts - 1
    launch(_experts_bwd_kernel)[(n_tiles,)](
        grads[0],
        grads[last],
        x,
        weights[0],
        weights[last],
        rstd,
        dx,
        part,
        *tiles,
        K,
        n_tiles,
        PARTS=parts,
        ROWS=rows,
        ITERS=TILE // rows,
        Y_DTYPE=tl_dtype(torch.promote_types(weights.dtype, x.dtype)),
        BLOCK_K=block,
        INTERPRET=INTERPRET,
        num_warps=row_warps(rows * block),
    )
    experts = tiles[0].clamp(min=0).long()  # spare tiles summed zeros into expert 0
    dw = torch.zeros((parts, weights.shape[1], K), dtype=torch.float32, device=x.device)
    return dx, dw.index_add_(1, experts, part).to(weights.dtype)
