"""RMSNorm + int8 quantization of one input for two or three BitLinears that read it.

q/k/v (and gate/up) read the same x, each through its own RMSNorm weight. Apart, they read x
three times forward, and backward write three input gradients that autograd then adds.
Together, one pass reads x once, computes rstd once and writes each layer's codes and s_x.
The backward reads x once with each layer's output gradient and writes the summed input
gradient (in float32, rounded once). Each layer's result is `actquant`'s, from the same
jit helpers. The input gradient is the sum of theirs, up to that rounding.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bittern.kernels import actquant
from bittern.kernels.actquant import (
    load_normed_rows,
    norm_input_grad,
    norm_quantize_store,
    normalize_rows,
    rmsnorm_quant_backward_reference,
    rmsnorm_quant_reference,
    row_block,
    tile_rows,
)
from bittern.kernels.common import INTERPRET, launch, round_to, row_warps, sm_count, tl_dtype

MAX_LAYERS = 3

# ---- reference -------------------------------------------------------------------------


def rmsnorm_quant_group_reference(x: torch.Tensor, weights: list[torch.Tensor], eps: float):
    """([codes], [s_x], rstd): `rmsnorm_quant_reference` of x for each norm weight."""
    outs = [rmsnorm_quant_reference(x, w, eps) for w in weights]
    return [o[0] for o in outs], [o[1] for o in outs], outs[0][2]


def rmsnorm_quant_group_backward_reference(
    grads: list[torch.Tensor], x: torch.Tensor, weights: list[torch.Tensor], eps: float
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(dx summed in float32, [dweight]): each layer's `rmsnorm_quant_backward_reference`."""
    parts = [rmsnorm_quant_backward_reference(g, x, w, eps) for g, w in zip(grads, weights, strict=True)]
    dx = torch.stack([p[0].float() for p in parts]).sum(0).to(x.dtype)
    return dx, [p[1] for p in parts]


# ---- kernels ---------------------------------------------------------------------------


@triton.jit
def _group_fwd_kernel(
    X,
    W0,
    W1,
    W2,
    Q0,
    Q1,
    Q2,
    S0,
    S1,
    S2,
    RSTD,
    M,
    K,
    eps,
    LAYERS: tl.constexpr,
    Y_DTYPE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    rows, cols, rmask, mask, offs = row_block(tl.program_id(0), M, K, ROWS, BLOCK_K)
    xf = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    rstd, xn = normalize_rows(xf, K, eps, X.dtype.element_ty, INTERPRET)
    tl.store(RSTD + rows, rstd, mask=rmask)
    norm_quantize_store(xn, W0, Q0, S0, rows, cols, offs, mask, rmask, K, Y_DTYPE, INTERPRET)
    norm_quantize_store(xn, W1, Q1, S1, rows, cols, offs, mask, rmask, K, Y_DTYPE, INTERPRET)
    if LAYERS == 3:
        norm_quantize_store(xn, W2, Q2, S2, rows, cols, offs, mask, rmask, K, Y_DTYPE, INTERPRET)


@triton.jit
def _group_bwd_kernel(
    DY0,
    DY1,
    DY2,
    X,
    W0,
    W1,
    W2,
    RSTD,
    DX,
    DW_PART,
    M,
    K,
    programs,
    LAYERS: tl.constexpr,
    ITERS: tl.constexpr,
    ROWS: tl.constexpr,
    Y_DTYPE: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_K)
    cmask = cols < K
    w0 = tl.load(W0 + cols, mask=cmask, other=0.0).to(tl.float32)
    w1 = tl.load(W1 + cols, mask=cmask, other=0.0).to(tl.float32)
    w2 = tl.load(W2 + cols, mask=cmask, other=0.0).to(tl.float32)
    dw0 = tl.zeros([BLOCK_K], dtype=tl.float32)
    dw1 = tl.zeros([BLOCK_K], dtype=tl.float32)
    dw2 = tl.zeros([BLOCK_K], dtype=tl.float32)
    for i in range(ITERS):
        rows, cols, rmask, mask, offs = row_block(pid * ITERS + i, M, K, ROWS, BLOCK_K)
        xf, rstd, xn = load_normed_rows(X, RSTD, rows, rmask, mask, offs, X.dtype.element_ty, INTERPRET)
        dy = tl.load(DY0 + offs, mask=mask, other=0.0).to(tl.float32)
        dw0 += tl.sum(dy * xn, axis=0)
        dx = norm_input_grad(dy, w0, xf, rstd, K, X.dtype.element_ty, Y_DTYPE, INTERPRET)
        dy = tl.load(DY1 + offs, mask=mask, other=0.0).to(tl.float32)
        dw1 += tl.sum(dy * xn, axis=0)
        dx += norm_input_grad(dy, w1, xf, rstd, K, X.dtype.element_ty, Y_DTYPE, INTERPRET)
        if LAYERS == 3:
            dy = tl.load(DY2 + offs, mask=mask, other=0.0).to(tl.float32)
            dw2 += tl.sum(dy * xn, axis=0)
            dx += norm_input_grad(dy, w2, xf, rstd, K, X.dtype.element_ty, Y_DTYPE, INTERPRET)
        tl.store(DX + offs, round_to(dx, DX.dtype.element_ty, INTERPRET), mask=mask)
    part = DW_PART + pid.to(tl.int64) * K + cols
    tl.store(part, dw0, mask=cmask)
    tl.store(part + programs * K, dw1, mask=cmask)
    if LAYERS == 3:
        tl.store(part + 2 * programs * K, dw2, mask=cmask)


# ---- launchers -------------------------------------------------------------------------


def _padded(items: list, fill) -> list:
    """`items` padded to MAX_LAYERS with `fill` (an unused slot's stand-in pointer)."""
    return list(items) + [fill] * (MAX_LAYERS - len(items))


def _check(x: torch.Tensor, weights: list[torch.Tensor]) -> None:
    assert x.dim() == 2 and x.is_contiguous() and 2 <= len(weights) <= MAX_LAYERS
    assert len({w.dtype for w in weights}) == 1, "the norm weights share a dtype"


def rmsnorm_quant_group(x: torch.Tensor, weights: list[torch.Tensor], eps: float):
    """Kernel version of `rmsnorm_quant_group_reference` for a contiguous (M, K) x."""
    _check(x, weights)
    M, K = x.shape
    codes = [torch.empty((M, K), dtype=torch.int8, device=x.device) for _ in weights]
    scales = [torch.empty(M, dtype=torch.float32, device=x.device) for _ in weights]
    rstd = torch.empty(M, dtype=torch.float32, device=x.device)
    if M == 0:
        return codes, scales, rstd
    block = triton.next_power_of_2(K)
    rows = tile_rows(block, actquant.FWD_TILE)  # actquant's tiles: one setting for both
    launch(_group_fwd_kernel)[(triton.cdiv(M, rows),)](
        x,
        *_padded(weights, weights[0]),
        *_padded(codes, codes[0]),
        *_padded(scales, scales[0]),
        rstd,
        M,
        K,
        eps,
        LAYERS=len(weights),
        Y_DTYPE=tl_dtype(torch.promote_types(weights[0].dtype, x.dtype)),
        ROWS=rows,
        BLOCK_K=block,
        INTERPRET=INTERPRET,
        num_warps=row_warps(rows * block),
    )
    return codes, scales, rstd


def rmsnorm_quant_group_backward(
    grads: list[torch.Tensor], x: torch.Tensor, weights: list[torch.Tensor], rstd: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Kernel version of `rmsnorm_quant_group_backward_reference`; `rstd` is the forward's."""
    _check(x, weights)
    assert len(grads) == len(weights) and all(g.shape == x.shape and g.is_contiguous() for g in grads)
    M, K = x.shape
    dx = torch.empty_like(x)
    if M == 0:
        return dx, [torch.zeros_like(w) for w in weights]
    block = triton.next_power_of_2(K)
    rows = tile_rows(block, actquant.BWD_TILE)
    blocks = triton.cdiv(M, rows)
    iters = triton.cdiv(blocks, min(blocks, 4 * sm_count(x.device))) if isinstance(M, int) else 4
    programs = triton.cdiv(blocks, iters)
    part = torch.empty((len(weights), programs, K), dtype=torch.float32, device=x.device)
    launch(_group_bwd_kernel)[(programs,)](
        *_padded(grads, grads[0]),
        x,
        *_padded(weights, weights[0]),
        rstd,
        dx,
        part,
        M,
        K,
        programs,
        LAYERS=len(weights),
        ITERS=iters,
        ROWS=rows,
        Y_DTYPE=tl_dtype(torch.promote_types(weights[0].dtype, x.dtype)),
        BLOCK_K=block,
        INTERPRET=INTERPRET,
        num_warps=row_warps(rows * block),
    )
    return dx, [part[i].sum(0).to(w.dtype) for i, w in enumerate(weights)]  # separate tensors, no views
