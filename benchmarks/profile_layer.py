"""Where a fused BitLinear's time goes: GPU kernels vs host-side launch work, per layer shape.

For each 1B-preset linear shape (M = 4 x 2048 tokens, bf16 autocast) it profiles a few
forward+backward passes of nn.Linear (bf16), the reference BitLinear and the fused BitLinear
with torch.profiler and writes, per variant: wall time per pass, summed GPU kernel time per
pass (so wall - GPU is time the GPU sat idle waiting on the host), host time per pass, and
the kernels that take the most GPU time. JSON out, a summary printed.

    PYTHONPATH=. python benchmarks/profile_layer.py --out profile.json [--compiled]

The fused layer's codes are refreshed after every pass (a CodeRefresher), as the trainer's step does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import profile_summary
from bittern.nn import BitLinear, CodeRefresher, KernelOptions, configure_fast_path

SHAPES = [("q/o_proj", 2048, 2048), ("gate/up_proj", 2048, 5632), ("down_proj", 5632, 2048)]
TOKENS = 4 * 2048
PASSES = 10


def make_layer(kind: str, k: int, n: int) -> nn.Module:
    if kind == "bf16":
        return nn.Linear(k, n, bias=False).cuda()
    layer = BitLinear(k, n, bias=False).cuda()
    configure_fast_path(layer, KernelOptions(enabled=kind != "reference"))
    return layer


def one_pass(layer: nn.Module, refresher: CodeRefresher, x: torch.Tensor, g: torch.Tensor) -> None:
    with torch.autocast("cuda", torch.bfloat16):
        y = layer(x)
    y.backward(g)
    with torch.no_grad():  # the optimizer's write, and the refresh of the codes that follows it
        layer.weight.add_(0.0)
    refresher.refresh()


def profile(kind: str, k: int, n: int, compiled: bool) -> dict:
    torch.manual_seed(0)
    layer = make_layer(kind, k, n)
    refresher = CodeRefresher(layer)
    if compiled:
        layer = torch.compile(layer)
    x = torch.randn(TOKENS, k, device="cuda", requires_grad=True)
    g = torch.randn(TOKENS, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):  # warm-up: autotuning, compilation of the Triton kernels
        one_pass(layer, refresher, x, g)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(PASSES):
        one_pass(layer, refresher, x, g)
    host_ms = (time.perf_counter() - start) * 1e3 / PASSES  # time to issue one pass
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - start) * 1e3 / PASSES
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(PASSES):
            one_pass(layer, refresher, x, g)
        torch.cuda.synchronize()
    gpu_ms, kernels, host_ops = profile_summary(prof, PASSES, "pass", kernels=12, host_ops=10, name_len=90)
    return {
        "wall_ms": wall_ms,
        "host_issue_ms": host_ms,
        "gpu_kernel_ms": gpu_ms,
        "gpu_idle_ms": max(wall_ms - gpu_ms, 0.0),
        "kernels": kernels,
        "host_ops": host_ops,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--compiled", action="store_true", help="torch.compile each layer first")
    p.add_argument("--shapes", default="", help="comma-separated names of SHAPES (default all)")
    args = p.parse_args()
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "tokens": TOKENS,
        "compiled": args.compiled,
        "results": [],
    }
    for name, k, n in SHAPES:
        if args.shapes and name not in args.shapes.split(","):
            continue
        for kind in ("bf16", "reference", "fused"):
            row = {"layer": name, "in": k, "out": n, "variant": kind, **profile(kind, k, n, args.compiled)}
            report["results"].append(row)
            print(
                f"{name:13s} {kind:9s} wall {row['wall_ms']:.3f} ms  gpu {row['gpu_kernel_ms']:.3f} ms  "
                f"host issue {row['host_issue_ms']:.3f} ms",
                flush=True,
            )
            for kern in row["kernels"]:
                print(f"    {kern['ms_per_pass']:.3f} ms x{kern['calls']}  {kern['name']}")
            if kind == "fused":
                for op in row["host_ops"][:6]:
                    print(f"    host {op['self_ms_per_pass']:.3f} ms  {op['name']}")
            Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
