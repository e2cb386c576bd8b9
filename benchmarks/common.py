"""Shared by the benchmark scripts: train one config variant and summarise it."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from bittern.config import load_config, parse_overrides
from bittern.monitor import read_metrics
from bittern.train import Trainer


def run_one(config: str, overrides: list[str], out: Path) -> dict:
    """Train `config` with `overrides` into `out`; median tokens/s (first two intervals dropped),
    peak GPU memory, final train and validation loss."""
    cfg = load_config(config, parse_overrides(overrides))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer = Trainer(cfg, out, progress=False)
    result = trainer.run()
    records = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    speeds = [r["tokens_per_sec"] for r in records if "tokens_per_sec" in r][2:]
    tok_s = statistics.median(speeds) if speeds else float("nan")
    return {
        "overrides": overrides,
        "params": trainer.model.num_params(non_embedding=False),
        "tokens_per_sec": tok_s,
        "step_time_s": cfg.train.batch_size * cfg.train.seq_len / tok_s,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None,
        "final_train_loss": records[-1]["loss"],
        "val_loss": result.val_loss,
        "val_perplexity": result.val_perplexity,
        "train_curve": {r["step"]: r["loss"] for r in records},
        "val_curve": {r["step"]: r["val_loss"] for r in records if "val_loss" in r},
        "steps": result.step,
        "tokens": cfg.train.steps * cfg.train.batch_size * cfg.train.seq_len,
        "skipped_steps": trainer.guard.skipped_total,
        "wall_s": time.perf_counter() - start,
    }


def header(config: str) -> dict:
    """Where and when a result was measured."""
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "config": config,
        "date": time.strftime("%Y-%m-%d"),
    }


def write_json(path: str | Path, report: dict) -> None:
    Path(path).write_text(json.dumps(report, indent=1))


def profile_summary(prof, repeats: int, per: str, kernels: int, host_ops: int, name_len: int) -> tuple:
    """(GPU kernel ms, top kernels, top host ops) per repeat of a torch.profiler run.

    Each kernel and host op is a dict with its name (cut to `name_len`), its time per repeat
    (`ms_per_<per>` / `self_ms_per_<per>`) and its calls per repeat.
    """
    events = prof.key_averages()
    cuda = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    cpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    gpu_ms = sum(e.self_device_time_total for e in cuda) / 1e3 / repeats
    top = sorted(cuda, key=lambda e: -e.self_device_time_total)[:kernels]
    cpu_top = sorted(cpu, key=lambda e: -e.self_cpu_time_total)[:host_ops]
    return (
        gpu_ms,
        [
            {
                "name": e.key[:name_len],
                f"ms_per_{per}": e.self_device_time_total / 1e3 / repeats,
                "calls": e.count // repeats,
            }
            for e in top
        ],
        [
            {
                "name": e.key[:name_len],
                f"self_ms_per_{per}": e.self_cpu_time_total / 1e3 / repeats,
                "calls": e.count // repeats,
            }
            for e in cpu_top
        ],
    )
