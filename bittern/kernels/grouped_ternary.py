"""Triton grouped int8 x ternary GEMM for mixture-of-experts layers (forward of the ternary experts).

y[r] = (x_codes[r] @ w_codes[e(r)]^T) * gamma[e(r)] / s_x[r] for rows r sorted by expert:
one launch for all experts. The grid's row tiles are laid out on the device from the counts
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
    K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    e = tl.load(tile_expert_ptr + pid_m)
    if e >= 0:
        row_end = tl.load(row_end_ptr + e)
        rm = tl.load(tile_row_ptr + pid_m) + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        row_ok = rm < row_end
        col_ok = rn < N
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
        y = acc.to(tl.float32) * g[None, :] / sx[:, None]
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
) -> torch.Tensor:
    """(M, N) = (x_codes @ w_codes[e]^T) * gamma[e] / s_x per expert's row block.

    x_codes (M, K) int8 sorted by expert, s_x (M,) float32, w_codes (E, N, K) int8,
    gamma (E, N) float32 (one value per output row of each expert), counts (E,) summing to M.
    """
    m, k = x_codes.shape
    n_experts, n, _ = w_codes.shape
    y = torch.empty((m, n), dtype=torch.float32, device=x_codes.device)
    if m == 0:
        return y.to(out_dtype)
    tile_expert, tile_row, row_end = tile_map(counts.to(x_codes.device), m, BLOCK_M)
    grid = (tile_expert.numel(), triton.cdiv(n, BLOCK_N))
    _grouped_kernel[grid](
        x_codes.contiguous(),
        s_x.float().contiguous(),
        w_codes.contiguous(),
        gamma.float().contiguous(),
        y,
        tile_expert,
        tile_row,
        row_end,
        n,
        K=k,
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
    )
    return y.to(out_dtype)
