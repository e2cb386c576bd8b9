"""int8 quantization of the output gradient, for the backward's int8 options.

grad_input = grad_out @ (W_q * gamma): the scale has to factor out of the sum over the
output features n, so grad_out is quantized per row (token) after multiplying in gamma (a
scalar, or one per output channel): g' = grad_out * gamma, codes = round(g' * s_g) with
s_g = 127 / max|g'_row|.

grad_weight = grad_out^T @ (x_q / s_x): the sum runs over tokens m, so 1 / s_x[m] is folded
into grad_out and the result quantized per column n (over all tokens), written transposed
(N, M) so that the int8 GEMM reads both operands K-major (docs/design.md, section 5).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bittern.kernels.common import INTERPRET, absmax_quantize, launch, round_half_even, row_warps
from bittern.quant.core import quantize_activations

# ---- reference -------------------------------------------------------------------------


def quantize_grad_rows_reference(grad: torch.Tensor, col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (M, N) int8 and s_g (M,) of grad * col, per row (col: a scalar or (N,) float32)."""
    codes, scale = quantize_activations(grad.float() * col)
    return codes, scale.squeeze(-1)


def quantize_grad_cols_reference(
    grad: torch.Tensor, x_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (N, M) int8 (transposed) and s_g (N,) of grad / s_x[:, None], per column."""
    codes, scale = quantize_activations((grad.float() / x_scale[:, None]).t())
    return codes, scale.squeeze(-1)


# ---- kernels ---------------------------------------------------------------------------


@triton.jit
def _quantize_rows_kernel(
    G, COL, Q, S, N, COL_PER_N: tl.constexpr, BLOCK_N: tl.constexpr, INTERPRET: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    g = tl.load(G + row * N + cols, mask=mask, other=0.0).to(tl.float32)
    if COL_PER_N:
        g = g * tl.load(COL + cols, mask=mask, other=0.0)
    else:
        g = g * tl.load(COL)
    q, s = absmax_quantize(g, INTERPRET)
    tl.store(Q + row * N + cols, q, mask=mask)
    tl.store(S + row, s)


@triton.jit
def _col_absmax_kernel(G, SX, PART, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    g = tl.load(G + rows[:, None].to(tl.int64) * N + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    sx = tl.load(SX + rows, mask=rows < M, other=1.0)
    v = tl.math.div_rn(g, sx[:, None])
    tl.store(PART + pid_m * N + cols, tl.max(tl.abs(v), axis=0), mask=cols < N)


@triton.jit
def _quantize_cols_t_kernel(
    G,
    SX,
    AMAX,
    QT,
    S,
    M,
    N,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    g = tl.load(G + rows[:, None].to(tl.int64) * N + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    sx = tl.load(SX + rows, mask=rows < M, other=1.0)
    amax = tl.maximum(tl.load(AMAX + cols, mask=cols < N, other=1.0), 1e-5)
    s = tl.math.div_rn(127.0, amax)
    q = round_half_even(tl.math.div_rn(g, sx[:, None]) * s[None, :], INTERPRET)
    q = tl.minimum(tl.maximum(q, -128.0), 127.0).to(tl.int8)
    tl.store(QT + cols[None, :].to(tl.int64) * M + rows[:, None], q, mask=mask)
    tl.store(S + cols, s, mask=cols < tl.where(pid_m == 0, N, 0))  # written once, by the first row tile


# ---- launchers -------------------------------------------------------------------------


def quantize_grad_rows(grad: torch.Tensor, col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel version of `quantize_grad_rows_reference` for a contiguous (M, N) grad."""
    assert grad.dim() == 2 and grad.is_contiguous()
    M, N = grad.shape
    codes = torch.empty((M, N), dtype=torch.int8, device=grad.device)
    scale = torch.empty(M, dtype=torch.float32, device=grad.device)
    if M:
        block = triton.next_power_of_2(N)
        launch(_quantize_rows_kernel)[(M,)](
            grad,
            col,
            codes,
            scale,
            N,
            COL_PER_N=col.numel() > 1,
            BLOCK_N=block,
            INTERPRET=INTERPRET,
            num_warps=row_warps(block),
        )
    return codes, scale


def quantize_grad_cols(grad: torch.Tensor, x_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel version of `quantize_grad_cols_reference` for a contiguous (M, N) grad."""
    assert grad.dim() == 2 and grad.is_contiguous()
    M, N = grad.shape
    if M == 0:
        return grad.new_empty((N, 0), dtype=torch.int8), grad.new_ones(N, dtype=torch.float32)
    bm, bn = 64, 64
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
    part = torch.empty((grid[0], N), dtype=torch.float32, device=grad.device)
    launch(_col_absmax_kernel)[grid](grad, x_scale, part, M, N, BLOCK_M=bm, BLOCK_N=bn)
    amax = part.amax(0)
    codes = torch.empty((N, M), dtype=torch.int8, device=grad.device)
    scale = torch.empty(N, dtype=torch.float32, device=grad.device)
    launch(_quantize_cols_t_kernel)[grid](
        grad, x_scale, amax, codes, scale, M, N, BLOCK_M=bm, BLOCK_N=bn, INTERPRET=INTERPRET
    )
    return codes, scale
