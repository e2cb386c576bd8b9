"""Progressive quantization: the schedule of lambda (0 full precision -> 1 fully quantized)."""

from __future__ import annotations

from torch import nn

from bittern.config import ProgressiveConfig
from bittern.nn import set_quant_lambda


def stepped_start(total: int, cfg: ProgressiveConfig, start_step: int = 0) -> int:
    """First step of a stepped schedule: round(start_frac * total), or `start_step` when it is > 0."""
    return start_step if start_step > 0 else round(cfg.start_frac * total)


def quant_lambda(step: int, total: int, cfg: ProgressiveConfig, start_step: int = 0) -> float:
    """Blend lambda in [0, 1] for 0-based `step` of `total`, the schedule starting at `start_step`.

    none:    1 (quantized from step 0).
    linear:  min(1, max(0, (step - start_step) / warmup_steps)): 0 at start_step, 1 at
             start_step + warmup_steps (1 throughout if warmup_steps <= 0).
    stepped: 0 for step < s0, then min(1, delta * (1 + (step - s0) // interval)), where
             s0 = round(start_frac * total) if start_step == 0, else s0 = start_step (the
             plateau fallback switches to the schedule from that step on).
    """
    if cfg.schedule == "linear":
        if cfg.warmup_steps <= 0:
            return 1.0
        return min(1.0, max(0.0, (step - start_step) / cfg.warmup_steps))
    if cfg.schedule == "stepped":
        s0 = stepped_start(total, cfg, start_step)
        if step < s0:
            return 0.0
        return min(1.0, max(0.0, cfg.delta * (1 + (step - s0) // max(1, cfg.interval))))
    return 1.0


def apply_quant_lambda(model: nn.Module, lam: float, activations: bool) -> None:
    """Set lambda on every BitLinear's weights, and on its activations if `activations` (else 1)."""
    set_quant_lambda(model, weight=lam, act=lam if activations else 1.0)
