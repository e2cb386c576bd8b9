"""Learning-rate schedules as pure functions of the step (so resume needs no scheduler state)."""

from __future__ import annotations

import math

from bittern.config import ScheduleConfig


def warmup_steps(cfg: ScheduleConfig, total: int) -> int:
    """Explicit warmup_steps if set, else warmup_frac of the run."""
    return cfg.warmup_steps if cfg.warmup_steps >= 0 else int(cfg.warmup_frac * total)


def lr_multiplier(step: int, total: int, cfg: ScheduleConfig) -> float:
    """Factor on the peak LR for 0-based optimizer step `step` of `total`.

    Linear warmup over the first W steps reaching 1 at step W-1, then cosine decay to
    min_lr_ratio at the last step (or constant).
    """
    w = warmup_steps(cfg, total)
    if step < w:
        return (step + 1) / w
    if cfg.name == "constant":
        return 1.0
    span = max(1, total - 1 - w)
    progress = min(1.0, (step - w) / span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine
