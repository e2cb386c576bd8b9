"""Where a training step's time goes, for the whole model: GPU kernels per step against wall time.

Builds a preset as `benchmarks/train_throughput.py` does (same variants, same step: bf16
autocast, fused AdamW, clipping, one sync), warms up, then profiles a few steps with
torch.profiler. Per variant: wall time per step, summed GPU kernel time per step (wall - GPU
is time the GPU waited on the host), and the kernels and host ops that take the most time.
JSON out, a summary printed.

    PYTHONPATH=. python benchmarks/profile_model.py --variants twin-compiled,fast-compiled --out p.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import profile_summary
from benchmarks.train_throughput import PRESET_BATCH, VARIANTS, build, compiled_parts, make_step, release
from bittern.config import OptimConfig
from bittern.train.optim import build_optimizer

STEPS = 3


def profile_variant(preset: str, name: str, seq: int, vocab: int, warmup: int) -> dict:
    variant = next(v for v in VARIANTS if v.name == name)
    model = build(preset, variant, vocab, seq)
    forward, loss_fn = compiled_parts(model, variant, "regional")
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4))
    batch = PRESET_BATCH[preset]

    def batches(i: int):
        g = torch.Generator(device="cuda").manual_seed(i)
        tokens = torch.randint(0, vocab, (batch, seq + 1), device="cuda", generator=g)
        yield tokens[:, :-1], tokens[:, 1:]

    step = make_step(model, forward, loss_fn, optimizer, batches)
    for i in range(warmup):
        step(i)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(STEPS):
        step(warmup + i)
    wall_ms = (time.perf_counter() - start) * 1e3 / STEPS
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for i in range(STEPS):
            step(warmup + STEPS + i)
    gpu_ms, kernels, host_ops = profile_summary(prof, STEPS, "step", kernels=18, host_ops=12, name_len=100)
    del model, forward, optimizer, step
    release()
    return {
        "preset": preset,
        "variant": name,
        "wall_ms_per_step": wall_ms,
        "gpu_kernel_ms_per_step": gpu_ms,
        "kernels": kernels,
        "host_ops": host_ops,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="1b")
    p.add_argument("--variants", default="twin-compiled,fast-compiled,ref-compiled")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("profile_model.py: needs a CUDA GPU", file=sys.stderr)
        return 2
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    report["results"] = []
    for name in args.variants.split(","):
        row = profile_variant(args.preset, name, args.seq, args.vocab, args.warmup)
        report["results"].append(row)
        print(
            f"{name}: wall {row['wall_ms_per_step']:.1f} ms/step, "
            f"GPU kernels {row['gpu_kernel_ms_per_step']:.1f}"
        )
        for k in row["kernels"]:
            print(f"    {k['ms_per_step']:8.2f} ms x{k['calls']:<4d} {k['name']}")
        for op in row["host_ops"][:8]:
            print(f"    host {op['self_ms_per_step']:8.2f} ms x{op['calls']:<5d} {op['name']}")
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
