"""Data-parallel scaling on one host: the same per-GPU work on 1 GPU and on N GPUs (DDP, FSDP2,
FSDP2 keeping gathered weights for the backward, FSDP2 with the 2-bit packed all-gather).

Each variant is a real `bittern train` run (torchrun for N > 1); tokens/s per GPU is the
median of the logged intervals (first two dropped) over the world size. Writes JSON.

    PYTHONPATH=. python benchmarks/scaling.py --config configs/gpu-1b.toml --gpus 2 --out r.json \
        -- --data.path=DATA --train.steps=30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bittern.config import load_config, parse_overrides
from bittern.monitor import read_metrics

MODES = {  # name: the overrides that make it
    "ddp": ["--dist.mode=ddp"],
    "fsdp": ["--dist.mode=fsdp"],
    "fsdp-keep": ["--dist.mode=fsdp", "--dist.reshard_after_forward=false"],
    "fsdp-packed": ["--dist.mode=fsdp", "--dist.packed_all_gather=true"],
}


def run(config: str, overrides: list[str], nproc: int, mode: str, out: Path, per_gpu_batch: int) -> dict:
    extra = [*overrides, *MODES[mode], f"--train.batch_size={per_gpu_batch * nproc}"]
    cmd = [
        sys.executable,
        "-m",
        "bittern",
        "train",
        "--config",
        config,
        "--out",
        str(out),
        "--quiet",
        "--nproc",
        str(nproc),
        *extra,
    ]  # --nproc relaunches under torchrun
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode:
        return {"gpus": nproc, "mode": mode, "error": proc.stderr[-2000:]}
    records = [r for r in read_metrics(out / "metrics.jsonl") if "tokens_per_sec" in r]
    tok_s = statistics.median(r["tokens_per_sec"] for r in records[2:])
    return {
        "gpus": nproc,
        "mode": mode,
        "global_batch": per_gpu_batch * nproc,
        "tokens_per_sec": tok_s,
        "tokens_per_sec_per_gpu": tok_s / nproc,
        "peak_memory_gb_rank0": max(r.get("memory/peak_allocated_gb", 0) for r in records),
        "final_loss": records[-1]["loss"],
        "wall_s": time.perf_counter() - start,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--out", required=True)
    args, overrides = p.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    cfg = load_config(args.config, parse_overrides(overrides))
    per_gpu = cfg.train.micro_batch_size * 2  # two micro-batches per GPU per step
    import torch

    report = {
        "device": torch.cuda.get_device_name(),
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "config": args.config,
        "overrides": overrides,
        "results": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for nproc, mode in ((1, "ddp"), *((args.gpus, m) for m in MODES)):
            row = run(args.config, overrides, nproc, mode, Path(tmp) / f"{mode}{nproc}", per_gpu)
            report["results"].append(row)
            Path(args.out).write_text(json.dumps(report, indent=1))
            print(json.dumps(row), flush=True)
    base = report["results"][0].get("tokens_per_sec_per_gpu")
    for r in report["results"][1:]:
        if base and "error" not in r:
            r["scaling_efficiency"] = r["tokens_per_sec_per_gpu"] / base
            print(f"{r['mode']} x{r['gpus']}: {r['scaling_efficiency']:.3f} efficiency per GPU")
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
