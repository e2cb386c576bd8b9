"""PNG plots of a run's metrics.jsonl (loss, LR, gradient norm, ternary health) for reports."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bittern.errors import BitternError
from bittern.monitor.metrics import current_records, read_metrics

# file stem -> (series keys, y-axis label, log scale)
PLOTS: dict[str, tuple[tuple[str, ...], str, bool]] = {
    "loss": (("loss", "val_loss"), "loss", False),
    "lr": (("lr",), "learning rate", False),
    "grad_norm": (("grad_norm",), "gradient norm (pre-clip)", True),
    "zero_frac": (("health/zero_frac",), "fraction of zero codes", False),
    "flip_frac": (("health/flip_frac",), "fraction of codes flipped", True),
    "tokens_per_sec": (("tokens_per_sec",), "tokens / s", False),
}


def _number(value: Any) -> float | None:
    """A metric as a float; the strings MetricsLogger writes for NaN/Inf become NaN (a gap)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else math.nan
    if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf", "+inf", "infinity"):
        return math.nan
    return None


def load_records(path: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl that count (not superseded by a rollback); errors name the file."""
    try:
        records = read_metrics(path)
    except FileNotFoundError:
        raise BitternError(f"no metrics file at {path}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BitternError(f"cannot read metrics file {path}: {e}") from None
    if not all(isinstance(r, dict) and isinstance(r.get("step"), int) for r in records):
        raise BitternError(f"malformed metrics file {path}: each line must be an object with an integer step")
    return current_records(records)


def metric_series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of every record that has `key` as a number."""
    points = [(r["step"], _number(r[key])) for r in records if key in r]
    points = [(s, v) for s, v in points if v is not None]
    return [s for s, _ in points], [v for _, v in points]


def _plot(out: Path, series: dict[str, tuple[list[int], list[float]]], ylabel: str, log: bool) -> Path:
    """One figure with one line per series (log y only when every value is positive)."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state; imported here as it is slow

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for key, (steps, values) in series.items():
        ax.plot(steps, values, label=key, marker="o" if len(steps) < 30 else None, markersize=3)
    if log and all(v > 0 for _, vs in series.values() for v in vs if not math.isnan(v)):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.savefig(out, dpi=100)
    return out


def plot_run(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Write one PNG per metric group found in `run_dir/metrics.jsonl`; returns their paths."""
    run_dir = Path(run_dir)
    records = load_records(run_dir / "metrics.jsonl")
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "plots"
    written = []
    for stem, (keys, ylabel, log) in PLOTS.items():
        series = {k: s for k in keys if (s := metric_series(records, k))[0]}
        if series:
            out_dir.mkdir(parents=True, exist_ok=True)
            written.append(_plot(out_dir / f"{stem}.png", series, ylabel, log))
    return written
