"""Tile and warp sweep of the fused RMSNorm + int8 kernels on the GPU.

For the 1B preset's activation shapes (8192 tokens x 2048 and x 5632, bf16), times the
one-layer kernels (forward, backward, dequantize) and the shared-norm group kernels of q/k/v
(three layers) and gate/up (two), first over elements-per-program tiles (`actquant.FWD_TILE` /
`BWD_TILE`, at the default warps), then over warps per program (`row_warps`, at the default
tile), and compares each with its floor (bytes moved over the measured device-copy
bandwidth). JSON out.

    PYTHONPATH=. python benchmarks/norm_tiles.py --out tiles.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch

TILES = (2048, 4096, 8192, 16384)
WARPS = (1, 2, 4, 8, 16)
SHAPES = ((8192, 2048), (8192, 5632))


def kernels(M: int, K: int) -> dict:
    """name -> (callable, bytes it must move) at one activation shape."""
    from bittern.kernels import actquant, sharednorm

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(M, K, device="cuda", generator=g).bfloat16()
    w = [torch.rand(K, device="cuda", generator=g) + 0.5 for _ in range(3)]
    grads = [torch.randn(M, K, device="cuda", generator=g).bfloat16() for _ in range(3)]
    codes, scale, rstd = actquant.rmsnorm_quant(x, w[0], 1e-5)
    found = {
        "forward": (partial(actquant.rmsnorm_quant, x, w[0], 1e-5), M * K * (2 + 1)),
        "backward": (partial(actquant.rmsnorm_quant_backward, grads[0], x, w[0], rstd), M * K * 6),
        "dequantize": (partial(actquant.dequantize_rows, codes, scale, torch.bfloat16), M * K * 3),
    }
    if K == 2048:  # the shared inputs: q/k/v and gate/up read the 2048-wide norm output
        for n in (3, 2):
            found[f"group{n}_forward"] = (
                partial(sharednorm.rmsnorm_quant_group, x, w[:n], 1e-5),
                M * K * (2 + n),
            )
            found[f"group{n}_backward"] = (
                partial(sharednorm.rmsnorm_quant_group_backward, grads[:n], x, w[:n], rstd),
                M * K * (2 + 2 * n + 2),
            )
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("norm_tiles.py: needs a CUDA GPU", file=sys.stderr)
        return 2
    from triton.testing import do_bench

    from bittern.kernels import actquant, common, sharednorm

    src = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = do_bench(lambda: dst.copy_(src))
    bandwidth = 2 * src.numel() / (copy_ms * 1e-3)  # bytes/s, read + write
    report = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d")}
    report["copy_bandwidth_gb_s"] = bandwidth / 1e9
    default_tile = actquant.FWD_TILE
    settings = [(tile, None) for tile in TILES] + [(default_tile, warps) for warps in WARPS]
    rows = []
    for M, K in SHAPES:
        for tile, warps in settings:
            actquant.FWD_TILE = actquant.BWD_TILE = tile
            chosen = common.row_warps if warps is None else (lambda block, w=warps: w)
            actquant.row_warps = sharednorm.row_warps = chosen
            for name, (fn, nbytes) in kernels(M, K).items():
                ms = do_bench(fn)
                floor_ms = nbytes / bandwidth * 1e3
                row = {"M": M, "K": K, "tile": tile, "warps": warps, "kernel": name}
                rows.append({**row, "ms": ms, "floor_ms": floor_ms})
                print(
                    f"{M}x{K} tile {tile:6d} warps {warps or 'default':>7} {name:16s} "
                    f"{ms * 1e3:7.1f} us  floor {floor_ms * 1e3:6.1f} us"
                )
    report["rows"] = rows
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
