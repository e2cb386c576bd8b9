"""Fused RMSNorm + per-token int8 activation quantization, forward and backward.

Mirrors `bittern.nn.RMSNorm` followed by `bittern.quant.quantize_activations` (DESIGN.md
section 1): y = weight * (x * rstd).to(x.dtype) with rstd = 1 / sqrt(mean(x^2) + eps) in
float32, then s_x = 127 / max|y_row|, codes = round(y * s_x). One program per token reads
the row once and writes int8 codes, s_x and rstd. The backward is the RMSNorm backward with
the straight-through estimator (the quantizer passes the gradient through unchanged).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bittern.kernels.common import INTERPRET, absmax_quantize, launch, round_to, row_warps, sm_count, tl_dtype
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
    K,
    eps,
    HAS_NORM: tl.constexpr,
    Y_DTYPE: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_K)
    mask = cols < K
    x = tl.load(X + row * K + cols, mask=mask, other=0.0)
    xf = x.to(tl.float32)
    if HAS_NORM:
        rstd = tl.math.rsqrt(tl.sum(xf * xf, axis=0) / K + eps)
        xn = round_to(xf * rstd, X.dtype.element_ty, INTERPRET).to(tl.float32)
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        y = round_to(w * xn, Y_DTYPE, INTERPRET).to(tl.float32)  # the norm's dtype: promote(weight, x)
        tl.store(RSTD + row, rstd)
    else:
        y = xf
    q, s = absmax_quantize(y, INTERPRET)
    tl.store(Q + row * K + cols, q, mask=mask)
    tl.store(S + row, s)


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
    ROWS: tl.constexpr,
    Y_DTYPE: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_K)
    cmask = cols < K
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_K], dtype=tl.float32)
    for i in range(ROWS):
        row = pid * ROWS + i
        mask = cols < tl.where(row < M, K, 0)  # rows past M: nothing (not `cmask & scalar`: see common)
        offs = row.to(tl.int64) * K + cols
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(X + offs, mask=mask, other=0.0)
        xf = x.to(tl.float32)
        rstd = tl.load(RSTD + row, mask=row < M, other=0.0)
        xn = round_to(xf * rstd, X.dtype.element_ty, INTERPRET).to(tl.float32)
        dw += dy * xn
        # d(weight * xn)/dxn in the norm's dtype, cast to x's dtype, then through x * rstd(x)
        dxn = round_to(round_to(dy * w, Y_DTYPE, INTERPRET).to(tl.float32), X.dtype.element_ty, INTERPRET)
        dxn = dxn.to(tl.float32)
        c = tl.sum(dxn * xf, axis=0) / K
        dx = rstd * dxn - (rstd * rstd * rstd * c) * xf
        tl.store(DX + offs, round_to(dx, DX.dtype.element_ty, INTERPRET), mask=mask)
    tl.store(DW_PART + pid.to(tl.int64) * K + cols, dw, mask=cmask)


@triton.jit
def _dequantize_rows_kernel(Q, S, OUT, K, BLOCK_K: tl.constexpr, INTERPRET: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_K)
    mask = cols < K
    q = tl.load(Q + row * K + cols, mask=mask, other=0).to(tl.float32)
    s = tl.load(S + row)
    tl.store(OUT + row * K + cols, round_to(tl.math.div_rn(q, s), OUT.dtype.element_ty, INTERPRET), mask=mask)


# ---- launchers -------------------------------------------------------------------------


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
    launch(_rmsnorm_quant_kernel)[(M,)](
        x,
        x if weight is None else weight,
        codes,
        scale,
        rstd,
        K,
        eps,
        HAS_NORM=weight is not None,
        Y_DTYPE=tl_dtype(y_dtype),
        BLOCK_K=block,
        INTERPRET=INTERPRET,
        num_warps=row_warps(block),
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
    # a symbolic M (torch.compile's dynamic shapes) cannot pick a constexpr: a fixed 16 rows then
    rows = triton.cdiv(M, min(M, 4 * sm_count(x.device))) if isinstance(M, int) else 16
    programs = triton.cdiv(M, rows)
    part = torch.empty((programs, K), dtype=torch.float32, device=x.device)
    block = triton.next_power_of_2(K)
    launch(_rmsnorm_quant_bwd_kernel)[(programs,)](
        grad,
        x,
        weight,
        rstd,
        dx,
        part,
        M,
        K,
        ROWS=rows,
        Y_DTYPE=tl_dtype(torch.promote_types(weight.dtype, x.dtype)),
        BLOCK_K=block,
        INTERPRET=INTERPRET,
        num_warps=row_warps(block),
    )
    return dx, part.sum(0).to(weight.dtype)


def dequantize_rows(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Kernel version of `dequantize_rows_reference`."""
    M, K = codes.shape
    out = torch.empty((M, K), dtype=dtype, device=codes.device)
    if M:
        block = triton.next_power_of_2(K)
        launch(_dequantize_rows_kernel)[(M,)](
            codes, scale, out, K, BLOCK_K=block, INTERPRET=INTERPRET, num_warps=row_warps(block)
        )
    return out
