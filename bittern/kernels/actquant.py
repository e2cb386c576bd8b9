"""Fused RMSNorm + per-token int8 activation quantization, forward and backward.

Mirrors `bittern.nn.RMSNorm` followed by `bittern.quant.quantize_activations` (docs/design.md,
section 1): y = weight * (x * rstd).to(x.dtype) with rstd = 1 / sqrt(mean(x^2) + eps) in
float32, then s_x = 127 / max|y_row|, codes = round(y * s_x). One program per token reads
the row once and writes int8 codes, s_x and rstd. The backward is the RMSNorm backward with
the straight-through estimator (the quantizer passes the gradient through unchanged).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bittern.kernels.common import (
    INTERPRET,
    absmax_quantize_rows,
    launch,
    round_to,
    row_warps,
    sm_count,
    tl_dtype,
)
from bittern.quant.core import dequantize_activations, quantize_activations

# ---- reference -------------------------------------------------------------------------


def rmsnorm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """bittern.nn.RMSNorm's forward (float32 statistics, cast back, times the weight) and rstd (M,)."""
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * (xf * rstd).to(x.dtype), rstd.squeeze(-1)


def rmsnorm_quant_reference(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes (M, K) int8, s_x (M,) and rstd (M,) of RMSNorm (skipped if weight is None) + quantizer."""
    if weight is None:
        y, rstd = x, torch.ones(x.shape[0], device=x.device)
    else:
        y, rstd = rmsnorm_reference(x, weight, eps)
    codes, scale = quantize_activations(y)
    return codes, scale.squeeze(-1), rstd


def rmsnorm_quant_backward_reference(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dweight) by autograd through `rmsnorm_reference`; the quantizer is the identity (STE)."""
    x = x.detach().requires_grad_(True)
    weight = weight.detach().requires_grad_(True)
    y, _ = rmsnorm_reference(x, weight, eps)
    dx, dw = torch.autograd.grad(y, (x, weight), grad.to(y.dtype))
    return dx, dw


def dequantize_rows_reference(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """codes / s_x cast to `dtype`: the activation the reference path's matmul sees."""
    return dequantize_activations(codes, scale[:, None]).to(dtype)


# ---- kernels ---------------------------------------------------------------------------


@triton.jit
def _rmsnorm_quant_kernel(
    X,
    W,
    Q,
    S,
    RSTD,
    M,
    K,
    eps,
    HAS_NORM: tl.constexpr,
    Y_DTYPE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    # ROWS rows per program, each reduced on its own (a block of rows keeps more loads in flight)
    rows, cols, rmask, mask, offs = row_block(tl.program_id(0), M, K, ROWS, BLOCK_K)
    xf = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_NORM:
        rstd, xn = normalize_rows(xf, K, eps, X.dtype.element_ty, INTERPRET)
        tl.store(RSTD + rows, rstd, mask=rmask)
        norm_quantize_store(xn, W, Q, S, rows, cols, offs, mask, rmask, K, Y_DTYPE, INTERPRET)
    else:
        q, s = absmax_quantize_rows(xf, INTERPRET)
        tl.store(Q + offs, q, mask=mask)
        tl.store(S + rows, s, mask=rmask)


@triton.jit
def row_block(block, M, K, ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """Rows, columns, row mask, element mask and offsets of the `block`-th block of ROWS rows."""
    rows = block.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_K)
    rmask = rows < M
    mask = rmask[:, None] & (cols[None, :] < K)
    return rows, cols, rmask, mask, rows[:, None] * K + cols[None, :]


@triton.jit
def normalize_rows(xf, K, eps, X_DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """rstd (rows,) and x * rstd rounded to x's dtype (as float32) of float32 rows (padding 0)."""
    rstd = tl.math.rsqrt(tl.sum(xf * xf, axis=1) / K + eps)
    return rstd, round_to(xf * rstd[:, None], X_DTYPE, INTERPRET).to(tl.float32)


@triton.jit
def load_normed_rows(X, RSTD, rows, rmask, mask, offs, X_DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """x (float32), the forward's rstd and x * rstd as the forward rounded it, for a block of rows."""
    xf = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
    return xf, rstd, round_to(xf * rstd[:, None], X_DTYPE, INTERPRET).to(tl.float32)


@triton.jit
def norm_quantize_store(
    xn, W, Q, S, rows, cols, offs, mask, rmask, K, Y_DTYPE: tl.constexpr, INTERPRET: tl.constexpr
):
    """Scale normalized rows `xn` by the norm weight W, in the norm's dtype, quantize, store codes and s_x."""
    w = tl.load(W + cols, mask=cols < K, other=0.0).to(tl.float32)
    y = round_to(w[None, :] * xn, Y_DTYPE, INTERPRET).to(tl.float32)
    q, s = absmax_quantize_rows(y, INTERPRET)
    tl.store(Q + offs, q, mask=mask)
    tl.store(S + rows, s, mask=rmask)


@triton.jit
def _rmsnorm_quant_bwd_kernel(
    DY,
    X,
    W,
    RSTD,
    DX,
    DW_PART,
    M,
    K,
    ITERS: tl.constexpr,
    ROWS: tl.constexpr,
    Y_DTYPE: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    # ITERS blocks of ROWS rows per program; the program's part of dweight summed over them
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_K)
    cmask = cols < K
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_K], dtype=tl.float32)
    for i in range(ITERS):
        rows, cols, rmask, mask, offs = row_block(pid * ITERS + i, M, K, ROWS, BLOCK_K)
        xf, rstd, xn = load_normed_rows(X, RSTD, rows, rmask, mask, offs, X.dtype.element_ty, INTERPRET)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        dw += tl.sum(dy * xn, axis=0)
        dx = norm_input_grad(dy, w, xf, rstd, K, X.dtype.element_ty, Y_DTYPE, INTERPRET)
        tl.store(DX + offs, round_to(dx, DX.dtype.element_ty, INTERPRET), mask=mask)
    tl.store(DW_PART + pid.to(tl.int64) * K + cols, dw, mask=cmask)


@triton.jit
def norm_input_grad(
    dy, w, xf, rstd, K, X_DTYPE: tl.constexpr, Y_DTYPE: tl.constexpr, INTERPRET: tl.constexpr
):
    """float32 grad of rows x through y = w * (x * rstd(x)), for the grad dy of y (rows, block)."""
    # d(weight * xn)/dxn in the norm's dtype, cast to x's dtype, then through x * rstd(x)
    dxn = round_to(dy * w[None, :], Y_DTYPE, INTERPRET).to(tl.float32)
    dxn = round_to(dxn, X_DTYPE, INTERPRET).to(tl.float32)
    c = tl.sum(dxn * xf, axis=1) / K
    return rstd[:, None] * dxn - (rstd * rstd * rstd * c)[:, None] * xf


@triton.jit
def _dequantize_rows_kernel(
    Q, S, OUT, M, K, ROWS: tl.constexpr, BLOCK_K: tl.constexpr, INTERPRET: tl.constexpr
):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_K)
    rmask = rows < M
    mask = rmask[:, None] & (cols[None, :] < K)
    offs = rows[:, None] * K + cols[None, :]
    q = tl.load(Q + offs, mask=mask, other=0).to(tl.float32)
    s = tl.load(S + rows, mask=rmask, other=1.0)
    out = round_to(tl.math.div_rn(q, s[:, None]), OUT.dtype.element_ty, INTERPRET)
    tl.store(OUT + offs, out, mask=mask)


# ---- launchers -------------------------------------------------------------------------

# Elements per program's block of rows (a power of two): more rows per program when rows are short.
# 2048 gives the 1B preset's shapes one row per program, the layout measured on the H100 so far;
# `benchmarks/norm_tiles.py` sweeps larger tiles (not yet run on a GPU).
FWD_TILE = 2048
BWD_TILE = 2048


def tile_rows(block_k: int, tile: int) -> int:
    """Rows per program's block for rows padded to `block_k` elements."""
    return max(1, tile // block_k)


def rmsnorm_quant(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kernel version of `rmsnorm_quant_reference` for a contiguous (M, K) x."""
    assert x.dim() == 2 and x.is_contiguous()
    M, K = x.shape
    codes = torch.empty((M, K), dtype=torch.int8, device=x.device)
    scale = torch.empty(M, dtype=torch.float32, device=x.device)
    rstd = torch.ones(M, dtype=torch.float32, device=x.device) if weight is None else torch.empty_like(scale)
    if M == 0:
        return codes, scale, rstd
    y_dtype = x.dtype if weight is None else torch.promote_types(weight.dtype, x.dtype)
    block = triton.next_power_of_2(K)
    rows = tile_rows(block, FWD_TILE)
    launch(_rmsnorm_quant_kernel)[(triton.cdiv(M, rows),)](
        x,
        x if weight is None else weight,
        codes,
        scale,
        rstd,
        M,
        K,
        eps,
        HAS_NORM=weight is not None,
        Y_DTYPE=tl_dtype(y_dtype),
        ROWS=rows,
        BLOCK_K=block,
        INTERPRET=INTERPRET,
        num_warps=row_warps(rows * block),
    )
    return codes, scale, rstd


def rmsnorm_quant_backward(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel version of `rmsnorm_quant_backward_reference`; `rstd` is the forward's."""
    assert grad.shape == x.shape and grad.is_contiguous() and x.is_contiguous()
    M, K = x.shape
    dx = torch.empty_like(x)
    if M == 0:
        return dx, torch.zeros_like(weight)
    block = triton.next_power_of_2(K)
    rows = tile_rows(block, BWD_TILE)
    # about 4 programs per multiprocessor, each summing its part of dweight over ITERS blocks; a
    # symbolic M (torch.compile's dynamic shapes) cannot pick a constexpr: 4 blocks each then
    blocks = triton.cdiv(M, rows)
    iters = triton.cdiv(blocks, min(blocks, 4 * sm_count(x.device))) if isinstance(M, int) else 4
    programs = triton.cdiv(blocks, iters)
    part = torch.empty((programs, K), dtype=torch.float32, device=x.device)
    launch(_rmsnorm_quant_bwd_kernel)[(programs,)](
        grad,
        x,
        weight,
        rstd,
        dx,
        part,
        M,
        K,
        ITERS=iters,
        ROWS=rows,
        Y_DTYPE=tl_dtype(torch.promote_types(weight.dtype, x.dtype)),
        BLOCK_K=block,
        INTERPRET=INTERPRET,
        num_warps=row_warps(rows * block),
    )
    return dx, part.sum(0).to(weight.dtype)


def dequantize_rows(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Kernel version of `dequantize_rows_reference`."""
    M, K = codes.shape
    out = torch.empty((M, K), dtype=dtype, device=codes.device)
    if M:
        block = triton.next_power_of_2(K)
        rows = tile_rows(block, FWD_TILE)
        launch(_dequantize_rows_kernel)[(triton.cdiv(M, rows),)](
            codes,
            scale,
            out,
            M,
            K,
            ROWS=rows,
            BLOCK_K=block,
            INTERPRET=INTERPRET,
            num_warps=row_warps(rows * block),
        )
    return out
