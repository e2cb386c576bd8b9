"""Shared by the benchmark scripts: train one config variant and summarise it."""

from __future__ import annotations

import json
import signal
import statistics
import threading
import time
import traceback
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


# ---- self-checks that survive a time limit ----------------------------------------------


class Killed(Exception):
    """SIGTERM arrived (`timeout` ran out) while a check ran."""


def check_passed(result) -> bool:
    """A check's result passes when its "ok" is true: a dict's own, or every row's of a list."""
    if isinstance(result, dict):
        return bool(result.get("ok", False))
    if isinstance(result, list):
        return bool(result) and all(isinstance(r, dict) and r.get("ok", False) for r in result)
    return False


def write_json_atomic(path: str | Path, report: dict) -> None:
    """`report` as JSON at `path`, never half written: a kill mid-write leaves the previous file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=repr))
    tmp.replace(path)


def run_checks(
    checks,
    out: str | Path,
    report: dict | None = None,
    budget: float | None = None,
    start: float | None = None,
    log=None,
) -> dict:
    """Run named checks in order, `report` rewritten to `out` before and after each one.

    `checks` is a sequence of (name, fn); fn() returns a JSON-able result whose "ok" says
    whether it passed (`check_passed`). In `report["checks"][name]` each has its "status":
    "pending", "running" (the one a kill stopped), "passed", "failed", "error" (it raised: type,
    message and traceback kept, the next check runs), "skipped" (`budget` seconds since `start`,
    default now, had passed before it began; nothing new starts past the budget) or "killed"
    (SIGTERM arrived while it ran: recorded, the rest skipped). `report["ok"]` is whether every
    check that ran passed, `report["complete"]` whether every check ran. One line is logged per
    check as it ends, with the seconds since `start`. Returns the report.
    """
    log = log or (lambda line: print(line, flush=True))
    start = time.monotonic() if start is None else start
    report = {} if report is None else report
    report["budget_s"] = budget
    entries = report.setdefault("checks", {})
    for name, _ in checks:
        entries[name] = {"status": "pending"}
    previous = None
    if threading.current_thread() is threading.main_thread():

        def on_term(signum, frame):
            raise Killed(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, on_term)
    killed = False
    try:
        for name, fn in checks:
            elapsed = time.monotonic() - start
            if killed or (budget is not None and elapsed >= budget):
                entries[name] = {"status": "skipped", "reason": "killed" if killed else "budget"}
                log(f"[{elapsed:7.1f}s] {name}: skipped ({'killed' if killed else 'budget'})")
                continue
            entries[name] = {"status": "running", "started_s": round(elapsed, 2)}
            write_json_atomic(out, report)
            began = time.monotonic()
            try:
                result = fn()
                entry = {"status": "passed" if check_passed(result) else "failed", "result": result}
            except Killed as e:
                killed = True
                entry = {"status": "killed", "error": str(e)}
            except Exception as e:  # recorded; the next check runs
                entry = {
                    "status": "error",
                    "error": f"{type(e).__name__}: {e}"[:2000],
                    "trace": traceback.format_exc()[-4000:],
                }
            entry["seconds"] = round(time.monotonic() - began, 2)
            entries[name] = entry
            statuses = [e["status"] for e in entries.values()]
            report["ok"] = not any(s in ("failed", "error", "killed") for s in statuses)
            report["wall_s"] = round(time.monotonic() - start, 2)
            write_json_atomic(out, report)
            detail = f" {entry['error'][:300]}" if "error" in entry else ""
            log(f"[{report['wall_s']:7.1f}s] {name}: {entry['status']} ({entry['seconds']:.1f}s){detail}")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    statuses = [e["status"] for e in entries.values()]
    report["ok"] = not any(s in ("failed", "error", "killed") for s in statuses)
    report["complete"] = all(s in ("passed", "failed", "error") for s in statuses)
    report["skipped"] = [n for n, e in entries.items() if e["status"] == "skipped"]
    report["wall_s"] = round(time.monotonic() - start, 2)
    write_json_atomic(out, report)
    return report


def checks_exit_status(report: dict) -> int:
    """0: every check ran and passed; 1: one failed; 3: none failed but some were skipped."""
    if not report["ok"]:
        return 1
    return 0 if report["complete"] else 3
