"""Triton grouped int8 x ternary GEMM for mixture-of-experts layers (forward of the ternary experts).

y[r] = (x_codes[r] @ w_codes[e(r)]^T) * gamma[e(r)] / s_x[r] for rows r sorted by expert:
one launch for all experts. The weight's rows may be P parts of n rows each (gate and up
concatenated) with activation codes of their own for each part (each its own norm weight), or
one set of codes for all parts. The grid's row tiles are laid out on the device from the counts
(a tile never spans two experts; spare tiles at the end exit at once), so nothing waits on
the host. The int8 products accumulate exactly in int32, as in bittern.kernels.int8_mm; loop
bounds are constexpr and masks vector & vector so Triton's interpreter runs it too.

Importing this module imports Triton; bittern.kernels.grouped imports it only when used, and
`bittern.kernels.available` says where it runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bittern.kernels.common import INTERPRET, TL_DTYPES, round_to

BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 64


@triton.jit
def _grouped_kernel(
    x_ptr,
    sx_ptr,
    w_ptr,
    g_ptr,
    y_ptr,
    tile_expert_ptr,
    tile_row_ptr,
    row_end_ptr,
    N,
    n_part,
    tiles_per_part,
    x_part_stride,
    sx_part_stride,
    K: tl.constexpr,
    Y_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    e = tl.load(tile_expert_ptr + pid_m)
    if e >= 0:
        part = pid_n // tiles_per_part  # a column tile never spans two parts
        x_ptr += part.to(tl.int64) * x_part_stride  # stride 0: one set of codes for every part
        sx_ptr += part * sx_part_stride
        row_end = tl.load(row_end_ptr + e)
        rm = tl.load(tile_row_ptr + pid_m) + tl.arange(0, BLOCK_M)
        rl = (pid_n - part * tiles_per_part) * BLOCK_N + tl.arange(0, BLOCK_N)
        rn = part * n_part + rl
        rk = tl.arange(0, BLOCK_K)
        row_ok = rm < row_end
        col_ok = rl < n_part
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            k_ok = (k0 + rk) < K
            a = tl.load(
                x_ptr + rm[:, None] * K + (k0 + rk)[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0
            )
            b = tl.load(
                w_ptr + e.to(tl.int64) * N * K + rn[None, :] * K + (k0 + rk)[:, None],
                mask=col_ok[None, :] & k_ok[:, None],
                other=0,
            )
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        sx = tl.load(sx_ptr + rm, mask=row_ok, other=1.0)
        g = tl.load(g_ptr + e * N + rn, mask=col_ok, other=0.0)
        y = round_to(acc.to(tl.float32) * g[None, :] / sx[:, None], Y_DTYPE, INTERPRET)
        tl.store(y_ptr + rm[:, None] * N + rn[None, :], y, mask=row_ok[:, None] & col_ok[None, :])


def tile_map(
    counts: torch.Tensor, rows: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(expert of each row tile or -1, the tile's first row, each expert's end row), on the device."""
    n_experts = counts.numel()
    tiles = (counts + block_m - 1) // block_m
    tile_end = tiles.cumsum(0)
    row_end = counts.cumsum(0)
    t = torch.arange(triton.cdiv(rows, block_m) + n_experts, device=counts.device)
    e = torch.searchsorted(tile_end, t, right=True)
    ec = e.clamp(max=n_experts - 1)
    first_row = row_end[ec] - counts[ec] + (t - (tile_end[ec] - tiles[ec])) * block_m
    return (
        torch.where(e < n_experts, ec, -1).to(torch.int32),
        first_row.to(torch.int32),
        row_end.to(torch.int32),
    )


def grouped_int8_ternary_mm(
    x_codes: torch.Tensor,
    s_x: torch.Tensor,
    w_codes: torch.Tensor,
    gamma: torch.Tensor,
    counts: torch.Tensor,
    out_dtype: torch.dtype = torch.float32,
    parts: int = 1,
    tiles: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(M, N) = (x_codes @ w_codes[e]^T) * gamma[e] / s_x per expert's row block.

    x_codes (M, K) int8 sorted by expert, s_x (M,) float32, w_codes (E, N, K) int8,
    gamma (E, N) float32 (one value per output row of each expert), counts (E,) summing to M.
    `parts` > 1: w's rows are `parts` blocks of N / parts rows; x_codes may then be (parts, M, K)
    and s_x (parts, M), block p's columns taking x_codes[p] (a (1, M, K) or (M, K) x serves all).
    `tiles`: `tile_map(counts, M, BLOCK_M)` if the caller has it. The result is rounded once, to
    `out_dtype`.
    """
    x3 = x_codes if x_codes.dim() == 3 else x_codes[None]
    s2 = s_x.reshape(x3.shape[0], -1)
    x_parts, m, k = x3.shape
    n_experts, n, _ = w_codes.shape
    assert n % parts == 0 and x_parts in (1, parts)
    y = torch.empty((m, n), dtype=out_dtype, device=x_codes.device)
    if m == 0:
        return y
    tile_expert, tile_row, row_end = (
        tile_map(counts.to(x_codes.device), m, BLOCK_M) if tiles is None else tiles
    )
    n_part = n // parts
    tiles_per_part = triton.cdiv(n_part, BLOCK_N)
    shared = x_parts == 1
    grid = (tile_expert.numel(), parts * tiles_per_part)
    _grouped_kernel[grid](
        x3.contiguous(),
        s2.float().contiguous(),
        w_codes.contiguous(),
        gamma.float().contiguous(),
        y,
        tile_expert,
        tile_row,
        row_end,
        n,
        n_part,
        tiles_per_part,
        0 if shared else m * k,
        0 if shared else m,
        K=k,
        Y_DTYPE=TL_DTYPES[out_dtype],
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
        INTERPRET=INTERPRET,
    )
    return y
