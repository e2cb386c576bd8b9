"""Ternary weight quantization on the device (the kernels that make and refresh a layer's codes).

Mirrors `bittern.quant.ternarize` for per-tensor and per-channel scales: gamma =
max(mean|W|, EPS) * multiplier, W_q = clamp(round(W / gamma), -1, 1) as int8 in the
weight's own (out, in) layout, K-contiguous as Hopper's int8 tensor cores want it. The mean
is reduced on the device in two launches (partial sums, then every program of the
quantizing launch sums the partials itself), so nothing waits on the host.

`ternarize_weight(..., out=(codes, gamma))` rewrites codes in place: a layer keeps its codes
between optimizer steps and whoever steps the optimizer rewrites them after each step
(`bittern.kernels.coderefresh`, driven by `bittern.nn.CodeRefresher`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bittern.kernels.common import INTERPRET, launch, round_half_even, round_to
from bittern.quant.core import ternarize

MAX_PARTIALS = 1024

# ---- reference -------------------------------------------------------------------------


def ternarize_reference(
    w: torch.Tensor, gamma_multiplier: float, per_channel: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """`bittern.quant.ternarize`, with gamma flattened to (1,) per tensor or (out,) per channel."""
    codes, gamma = ternarize(w, "channel" if per_channel else "tensor", gamma_multiplier=gamma_multiplier)
    return codes, gamma.reshape(-1)


def dequantize_weight_reference(codes: torch.Tensor, gamma: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """codes * gamma cast to `dtype`: the weight the reference path's matmul sees."""
    g = gamma[:, None] if gamma.numel() > 1 else gamma.reshape(())
    return (codes.float() * g).to(dtype)


# ---- kernels ---------------------------------------------------------------------------


@triton.jit
def _abs_sum_kernel(W, PART, numel, ITERS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(ITERS):
        offs = (pid * ITERS + i) * BLOCK + tl.arange(0, BLOCK)
        acc += tl.abs(tl.load(W + offs, mask=offs < numel, other=0.0).to(tl.float32))
    tl.store(PART + pid, tl.sum(acc, axis=0))


@triton.jit
def _row_gamma_kernel(W, GAMMA, K, mult, ITERS: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    for i in range(ITERS):
        cols = i * BLOCK_K + tl.arange(0, BLOCK_K)
        acc += tl.abs(tl.load(W + row * K + cols, mask=cols < K, other=0.0).to(tl.float32))
    tl.store(GAMMA + row, tl.maximum(tl.sum(acc, axis=0) / K, 1e-5) * mult)


@triton.jit
def _ternarize_kernel(
    W,
    CODES,
    GAMMA,
    PART,
    N,
    K,
    n_part,
    numel,
    mult,
    PER_CHANNEL: tl.constexpr,
    PART_BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < N) & (cols[None, :] < K)
    offs = rows[:, None].to(tl.int64) * K + cols[None, :]
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    if PER_CHANNEL:
        gamma = tl.load(GAMMA + rows, mask=rows < N, other=1.0)[:, None]
    else:
        part = tl.load(PART + tl.arange(0, PART_BLOCK), mask=tl.arange(0, PART_BLOCK) < n_part, other=0.0)
        # float32 even when Inductor passes numel or mult as float64 (symbolic shapes under FSDP2)
        gamma = (tl.maximum(tl.sum(part, axis=0) / numel, 1e-5) * mult).to(tl.float32)
        tl.store(GAMMA, gamma, mask=(pid_n == 0) & (pid_k == 0))
    q = round_half_even(tl.math.div_rn(w, gamma), INTERPRET)
    q = tl.minimum(tl.maximum(q, -1.0), 1.0)
    tl.store(CODES + offs, q.to(tl.int8), mask=mask)


@triton.jit
def _dequantize_weight_kernel(
    CODES,
    GAMMA,
    OUT,
    N,
    K,
    PER_CHANNEL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < N) & (cols[None, :] < K)
    offs = rows[:, None].to(tl.int64) * K + cols[None, :]
    q = tl.load(CODES + offs, mask=mask, other=0).to(tl.float32)
    if PER_CHANNEL:
        gamma = tl.load(GAMMA + rows, mask=rows < N, other=1.0)[:, None]
    else:
        gamma = tl.load(GAMMA)
    tl.store(OUT + offs, round_to(q * gamma, OUT.dtype.element_ty, INTERPRET), mask=mask)


# ---- launchers -------------------------------------------------------------------------


def ternarize_weight(
    w: torch.Tensor,
    gamma_multiplier: float = 1.0,
    per_channel: bool = False,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel version of `ternarize_reference` for a contiguous (out, in) weight.

    `out`: (codes, gamma) tensors to write in place (a layer's codes are refreshed so).
    """
    assert w.dim() == 2 and w.is_contiguous()
    N, K = w.shape
    dev = w.device
    if out is None:
        codes = torch.empty((N, K), dtype=torch.int8, device=dev)
        gamma = torch.empty(N if per_channel else 1, dtype=torch.float32, device=dev)
    else:
        codes, gamma = out
    block_k = min(2048, triton.next_power_of_2(K))
    if per_channel:
        part, n_part, part_block = gamma, 1, 1
        launch(_row_gamma_kernel)[(N,)](
            w, gamma, K, gamma_multiplier, ITERS=triton.cdiv(K, block_k), BLOCK_K=block_k, num_warps=4
        )
    else:
        block = 4096
        iters = max(1, triton.cdiv(triton.cdiv(w.numel(), MAX_PARTIALS), block))
        n_part = triton.cdiv(w.numel(), iters * block)
        part = torch.empty(n_part, dtype=torch.float32, device=dev)
        part_block = triton.next_power_of_2(n_part)
        launch(_abs_sum_kernel)[(n_part,)](w, part, w.numel(), ITERS=iters, BLOCK=block, num_warps=8)
    bn, bk = 32, min(256, triton.next_power_of_2(K))
    launch(_ternarize_kernel)[(triton.cdiv(N, bn), triton.cdiv(K, bk))](
        w,
        codes,
        gamma,
        part,
        N,
        K,
        n_part,
        float(N * K),
        gamma_multiplier,
        PER_CHANNEL=per_channel,
        PART_BLOCK=part_block,
        BLOCK_N=bn,
        BLOCK_K=bk,
        INTERPRET=INTERPRET,
        num_warps=4,
    )
    return codes, gamma


def dequantize_weight(codes: torch.Tensor, gamma: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Kernel version of `dequantize_weight_reference`."""
    N, K = codes.shape
    out = torch.empty((N, K), dtype=dtype, device=codes.device)
    bn, bk = 32, min(256, triton.next_power_of_2(K))
    launch(_dequantize_weight_kernel)[(triton.cdiv(N, bn), triton.cdiv(K, bk))](
        codes,
        gamma,
        out,
        N,
        K,
        PER_CHANNEL=gamma.numel() > 1,
        BLOCK_N=bn,
        BLOCK_K=bk,
        INTERPRET=INTERPRET,
        num_warps=4,
    )
    return out
