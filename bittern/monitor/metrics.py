"""Metric sinks: a JSONL file (one object per logged step) mirrored to TensorBoard.

A rollback replays steps: the records of the steps it undoes stay in metrics.jsonl, marked
`"superseded": true`, so every step has one record that counts (`current_records`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

SUPERSEDED = "superseded"


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep them readable
    return v


class MetricsLogger:
    """Appends `{"step": s, ...}` lines to metrics.jsonl and scalars to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = open(self.path, "a") if enabled else None  # noqa: SIM115 - closed in close()
        self._tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

    def supersede(self, after_step: int) -> None:
        """Mark the records after `after_step` as superseded: a rollback is about to replay those steps."""
        if not self.enabled:
            return
        self._file.close()
        mark_superseded(self.path, after_step)
        self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()

    def text(self, step: int, tag: str, message: str) -> None:
        """A text event (alerts) in TensorBoard."""
        if self._tb is not None:
            self._tb.add_text(tag, message, step)

    def histogram(self, step: int, tag: str, values: torch.Tensor) -> None:
        """A TensorBoard histogram of `values` (TB only, not JSONL); copied to the CPU only when TB is on."""
        if self._tb is not None:
            self._tb.add_histogram(tag, values.detach().float().cpu(), step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def current_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records that count: those a rollback superseded left out."""
    return [r for r in records if r.get(SUPERSEDED) is not True]


def _rewrite(path: Path, lines: list[str]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(path)


def mark_superseded(path: Path, after_step: int) -> None:
    """Add `"superseded": true` to every record after `after_step`, atomically."""
    if not path.exists():
        return
    lines = []
    for line in path.read_text().splitlines():
        if line:
            record = json.loads(line)
            if record["step"] > after_step and SUPERSEDED not in record:
                line = json.dumps({**record, SUPERSEDED: True})
            lines.append(line)
    _rewrite(path, lines)


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records after `last_step` (a resumed run recomputes them), atomically."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    _rewrite(path, keep)
