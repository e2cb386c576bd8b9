"""Learning-rate and weight-decay schedules as pure functions of the step (resume needs no state).

All steps are 0-based optimizer steps of a run of `total` steps; the last step is `total - 1`.
W is the warmup length (`warmup_steps`), m is `min_lr_ratio`.
"""

from __future__ import annotations

import math

from bittern.config import ScheduleConfig


def warmup_steps(cfg: ScheduleConfig, total: int) -> int:
    """Explicit warmup_steps if set, else warmup_frac of the run."""
    return cfg.warmup_steps if cfg.warmup_steps >= 0 else int(cfg.warmup_frac * total)


def stage2_start(cfg: ScheduleConfig, total: int) -> int:
    """two_stage: the first step of stage 2, S = round(stage2_frac * total) (Python's round)."""
    return round(cfg.stage2_frac * total)


def _progress(step: int, start: int, total: int) -> float:
    """Fraction of the way from `start` to the last step, clamped to [0, 1]."""
    return min(1.0, max(0.0, (step - start) / max(1, total - 1 - start)))


def _cosine(progress: float, high: float, low: float) -> float:
    """Half-cosine from `high` (progress 0) to `low` (progress 1)."""
    return low + (high - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_multiplier(step: int, total: int, cfg: ScheduleConfig) -> float:
    """Factor on the peak LR for 0-based optimizer step `step` of `total`.

    Warmup (every schedule): (step + 1) / W for step < W, reaching 1 at step W - 1. After it,
    with p = min(1, (step - W) / max(1, total - 1 - W)):
      cosine:    m + (1 - m) * (1 + cos(pi * p)) / 2
      linear:    1 - (1 - m) * p
      constant:  1
      two_stage: 1 for step < S; from S = round(stage2_frac * total) an abrupt drop to
                 r = stage2_lr_ratio, then m + (r - m) * (1 + cos(pi * q)) / 2 with
                 q = min(1, (step - S) / max(1, total - 1 - S)); m is reached at the last step.
    """
    w = warmup_steps(cfg, total)
    if step < w:
        return (step + 1) / w
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "two_stage":
        s = stage2_start(cfg, total)
        if step < s:
            return 1.0
        return _cosine(_progress(step, s, total), cfg.stage2_lr_ratio, cfg.min_lr_ratio)
    p = _progress(step, w, total)
    if cfg.name == "linear":
        return 1.0 - (1.0 - cfg.min_lr_ratio) * p
    return _cosine(p, 1.0, cfg.min_lr_ratio)


def weight_decay_at(step: int, total: int, cfg: ScheduleConfig, base: float) -> float:
    """Weight decay for `step`: `base`, except stage2_weight_decay for step >= S under two_stage."""
    if cfg.name == "two_stage" and step >= stage2_start(cfg, total):
        return cfg.stage2_weight_decay
    return base
