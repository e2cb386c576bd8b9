"""Profile training steps of train_throughput's variants inside DDP/FSDP2 on a one-rank group.

Each `VARIANT:WRAP` (e.g. `ref-compiled:fsdp`; wraps as `train_throughput.py --wraps`) is
built, warmed up for 4 steps, timed over 4, then profiled over 2 with torch.profiler. It
prints and writes per step: the wall time, the GPU kernels' time, the top kernels, the top host
ops, and Dynamo's graph counters (recompiles and graph breaks would show there).

    PYTHONPATH=. python benchmarks/profile_wraps.py --out p.json ref-compiled:none ref-compiled:fsdp
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks import train_throughput as tt
from benchmarks.common import profile_summary

VOCAB, SEQ, BATCH = 32000, 2048, 4


def profile_one(preset: str, variant: tt.Variant, wrap: str) -> dict:
    from torch._dynamo.utils import counters

    _, step = tt.variant_step(preset, variant, wrap, BATCH, VOCAB, SEQ, "regional")
    for i in range(4):
        step(i)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(4, 8):
        step(i)
    step_ms = (time.perf_counter() - start) / 4 * 1e3
    dynamo = {k: dict(v) for k, v in counters.items() if k in ("graph_break", "recompiles", "stats")}
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(8, 10):
            step(i)
        torch.cuda.synchronize()
    gpu_ms, kernels, host = profile_summary(prof, 2, "step", 18, 14, 90)
    counters.clear()
    return {"step_ms": step_ms, "gpu_ms": gpu_ms, "kernels": kernels, "host": host, "dynamo": dynamo}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="VARIANT:WRAP, e.g. ref-compiled:fsdp")
    p.add_argument("--preset", default="1b")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    variants = {v.name: v for v in tt.VARIANTS}
    runs = [tuple(r.split(":")) for r in args.runs]
    for r in runs:
        if len(r) != 2 or r[0] not in variants or r[1] not in tt.WRAPS:
            p.error(f"{':'.join(r)}: want VARIANT:WRAP, of {', '.join(variants)} and {', '.join(tt.WRAPS)}")
    if not torch.cuda.is_available():
        print("profile_wraps needs a CUDA GPU", file=sys.stderr)
        return 2
    tt.one_rank_group()
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": {}}
    for name, wrap in runs:
        row = profile_one(args.preset, variants[name], wrap)
        tt.release()
        report["runs"][f"{name}:{wrap}"] = row
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(
            f"== {name}:{wrap}: step {row['step_ms']:.1f} ms, GPU kernels {row['gpu_ms']:.1f} ms", flush=True
        )
        for k in row["kernels"][:12]:
            print(f"   {k['ms_per_step']:7.2f} ms {k['calls']:5d}x {k['name']}")
        for h in row["host"][:8]:
            print(f"   host {h['self_ms_per_step']:7.2f} ms {h['calls']:5d}x {h['name']}")
        print("   dynamo:", json.dumps(row["dynamo"])[:400], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
