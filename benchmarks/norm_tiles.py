"""Tile sweep of the fused RMSNorm + int8 kernels (forward, backward, dequantize) on the GPU.

For the 1B preset's activation shapes (8192 tokens x 2048 and x 5632, bf16) and several
elements-per-program tiles (`actquant.FWD_TILE` / `BWD_TILE`), times each kernel and compares
it with its floor (bytes moved over the measured device-copy bandwidth). JSON out.

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
SHAPES = ((8192, 2048), (8192, 5632))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("norm_tiles.py: needs a CUDA GPU", file=sys.stderr)
        return 2
    from triton.testing import do_bench

    from bittern.kernels import actquant

    src = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = do_bench(lambda: dst.copy_(src))
    bandwidth = 2 * src.numel() / (copy_ms * 1e-3)  # bytes/s, read + write
    report = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d")}
    report["copy_bandwidth_gb_s"] = bandwidth / 1e9
    rows = []
    for M, K in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(M, K, device="cuda", generator=g).bfloat16()
        w = torch.rand(K, device="cuda", generator=g) + 0.5
        grad = torch.randn(M, K, device="cuda", generator=g).bfloat16()
        floors = {  # bytes each kernel must move
            "forward": M * K * (2 + 1),
            "backward": M * K * (2 + 2 + 2),
            "dequantize": M * K * (1 + 2),
        }
        for tile in TILES:
            actquant.FWD_TILE = actquant.BWD_TILE = tile
            codes, scale, rstd = actquant.rmsnorm_quant(x, w, 1e-5)
            fns = {
                "forward": partial(actquant.rmsnorm_quant, x, w, 1e-5),
                "backward": partial(actquant.rmsnorm_quant_backward, grad, x, w, rstd),
                "dequantize": partial(actquant.dequantize_rows, codes, scale, torch.bfloat16),
            }
            for name, fn in fns.items():
                ms = do_bench(fn)
                floor_ms = floors[name] / bandwidth * 1e3
                rows.append({"M": M, "K": K, "tile": tile, "kernel": name, "ms": ms, "floor_ms": floor_ms})
                print(f"{M}x{K} tile {tile:6d} {name:10s} {ms * 1e3:7.1f} us  floor {floor_ms * 1e3:6.1f} us")
    report["rows"] = rows
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
