"""int8 x int8 -> int32 GEMM with the dequantizing rescale fused in the epilogue.

C[m, n] = (sum_k A[m, k] * B[n, k]) * col[n] / row[m], with A (M, K) and B (N, K) both
K-contiguous (Hopper's int8 tensor-core instructions take K-major operands only: DESIGN.md
section 6). Without scales C is the exact int32 product. For the forward, A = activation
codes, B = ternary codes, row = s_x and col = gamma; the backward's int8 options reuse it.
The int32 sum is exact for K < 2**17 (|A| <= 128, |B| <= 127).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bittern.kernels.common import INTERPRET, bucket, launch, round_to

# Tile shapes tried by the autotuner on the GPU (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages);
# shared memory per stage is (BLOCK_M + BLOCK_N) * BLOCK_K bytes, at most 227 KB in all on Hopper.
GPU_CONFIGS = (
    (128, 256, 128, 8, 3),
    (256, 128, 128, 8, 3),
    (128, 128, 128, 8, 4),
    (64, 256, 128, 4, 4),  # more tiles for the narrow k/v projections
)
INTERPRETER_CONFIG = (32, 32, 32, 4, 1)
GROUP_M = 8

# ---- reference -------------------------------------------------------------------------


def int8_mm_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.int32,
) -> torch.Tensor:
    """(a @ b^T) exactly in int64, then * col_scale / row_scale[:, None] in float32, cast to out_dtype."""
    acc = a.long() @ b.long().t()
    if row_scale is None and col_scale is None:
        return acc.to(out_dtype)
    c = acc.float()
    if col_scale is not None:
        c = c * (col_scale if col_scale.numel() > 1 else col_scale.reshape(()))
    if row_scale is not None:
        c = c / row_scale[:, None]
    return c.to(out_dtype)


# ---- kernel ----------------------------------------------------------------------------


@triton.jit
def _int8_mm_kernel(
    A,
    B,
    C,
    ROW,
    COL,
    M,
    N,
    M_BUCKET,  # the autotuner's key for M: next power of two (prompts of every length share a tile)
    K: tl.constexpr,
    HAS_ROW: tl.constexpr,
    HAS_COL: tl.constexpr,
    COL_PER_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    # grouped launch order: GROUP_M row-tiles share each column-tile while it is in L2
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_size
    pid_n = (pid % per_group) // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # rows past the end read a valid row (wrapped) and are masked at the store
    a_ptrs = A + (offs_m % M)[:, None].to(tl.int64) * K + offs_k[None, :]
    b_ptrs = B + (offs_n % N)[None, :].to(tl.int64) * K + offs_k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(tl.cdiv(K, BLOCK_K)):
        if K % BLOCK_K == 0:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            a = tl.load(a_ptrs, mask=offs_k[None, :] < K - k * BLOCK_K, other=0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < K - k * BLOCK_K, other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    if HAS_ROW or HAS_COL:
        c = acc.to(tl.float32)
        if HAS_COL:
            if COL_PER_N:
                c = c * tl.load(COL + offs_n, mask=offs_n < N, other=0.0)[None, :]
            else:
                c = c * tl.load(COL)
        if HAS_ROW:
            c = tl.math.div_rn(c, tl.load(ROW + offs_m, mask=offs_m < M, other=1.0)[:, None])
        c = round_to(c, C.dtype.element_ty, INTERPRET)
    else:
        c = acc
    c_ptrs = C + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.store(c_ptrs, c, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def _config(block_m, block_n, block_k, warps, stages) -> triton.Config:
    kwargs = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": GROUP_M}
    return triton.Config(kwargs, num_warps=warps, num_stages=stages)


_int8_mm_autotuned = triton.autotune(configs=[_config(*c) for c in GPU_CONFIGS], key=["M_BUCKET", "N", "K"])(
    _int8_mm_kernel
)


# ---- launcher --------------------------------------------------------------------------


def int8_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.int32,
    config: tuple[int, int, int, int, int] | None = None,
) -> torch.Tensor:
    """Kernel version of `int8_mm_reference`; `config` fixes the tile (else autotuned on the GPU)."""
    assert a.dtype == b.dtype == torch.int8 and a.is_contiguous() and b.is_contiguous()
    (M, K), (N, K2) = a.shape, b.shape
    assert K == K2, f"inner dimensions differ: {K} and {K2}"
    scaled = row_scale is not None or col_scale is not None
    assert scaled or out_dtype == torch.int32, "an unscaled product is int32"
    c = torch.empty((M, N), dtype=out_dtype, device=a.device)
    if M == 0 or N == 0:
        return c
    if K == 0:
        return c.zero_()
    # an absent scale is never read: any read-only pointer stands in (not c: no aliasing of the output)
    args = (a, b, c, row_scale if row_scale is not None else a, col_scale if col_scale is not None else a)
    flags = dict(
        HAS_ROW=row_scale is not None,
        HAS_COL=col_scale is not None,
        COL_PER_N=col_scale is not None and col_scale.numel() > 1,
    )
    if config is None and a.device.type == "cuda" and not INTERPRET:
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)
        launch(_int8_mm_autotuned)[grid](*args, M, N, bucket(M), K, **flags, INTERPRET=False)
        return c
    bm, bn, bk, warps, stages = config or INTERPRETER_CONFIG
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    launch(_int8_mm_kernel)[grid](
        *args,
        M,
        N,
        bucket(M),
        K,
        **flags,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        GROUP_M=GROUP_M,
        INTERPRET=INTERPRET,
        num_warps=warps,
        num_stages=stages,
    )
    return c
