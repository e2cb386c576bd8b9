"""Loss scaling: the fp16 dynamic loss scaler, and the gradient-norm-driven alpha rule."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from bittern.config import LossScaleConfig


class DynamicLossScaler:
    """fp16 dynamic loss scaling, written out so its sequence of scales is exact and CPU-testable.

    Per step: backward on `scale_loss(loss)`, then `unscale_and_check`; if it returns False,
    skip the optimizer step. Either way call `update(found_finite)`: an overflow multiplies the
    scale by fp16_backoff and restarts the count; fp16_growth_interval finite steps in a row
    multiply it by fp16_growth.
    """

    def __init__(self, cfg: LossScaleConfig) -> None:
        self.cfg = cfg
        self.scale = float(cfg.fp16_init)
        self.good_steps = 0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss times the current scale, to backpropagate instead of the loss."""
        return loss * self.scale

    def unscale_and_check(self, parameters: Iterable[torch.Tensor]) -> bool:
        """Divide every gradient by the scale in place; True if all of them are finite."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return True
        torch._foreach_mul_(grads, 1.0 / self.scale)
        return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())

    def update(self, found_finite: bool) -> None:
        """Back off on overflow; grow after fp16_growth_interval finite steps in a row."""
        if not found_finite:
            self.scale *= self.cfg.fp16_backoff
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps >= self.cfg.fp16_growth_interval:
            self.scale *= self.cfg.fp16_growth
            self.good_steps = 0

    def state_dict(self) -> dict:
        """Scale and growth counter as plain Python numbers, for checkpoints."""
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved."""
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])


def alpha_scale(grad_norm: float, cfg: LossScaleConfig) -> float:
    """Loss multiplier alpha = max(1, min(alpha_max, 1 + (1 - grad_norm / alpha_threshold))).

    The BitNet training tip: multiply the loss by alpha computed from the previous step's
    gradient norm, so small gradients (norm below the threshold) are boosted up to alpha_max.
    With AdamW this is almost a no-op: Adam's update is invariant to a constant gradient scale
    (up to eps), so alpha acts mainly through gradient clipping, which sees the scaled norm.
    """
    alpha = 1.0 + (1.0 - grad_norm / cfg.alpha_threshold)
    return max(1.0, min(cfg.alpha_max, alpha))
