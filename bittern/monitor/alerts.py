"""Alerts: loss NaN/Inf and gradient-norm blow-ups, shouted to stderr, TensorBoard and JSONL."""

from __future__ import annotations

import math
import sys

from bittern.monitor.metrics import MetricsLogger


class Alerts:
    """Checks a step's loss and gradient norm against the alert rules; remembers what fired."""

    def __init__(self, loss_nan: bool = True, grad_norm_threshold: float | None = 10.0) -> None:
        self.loss_nan = loss_nan
        self.grad_norm_threshold = grad_norm_threshold
        self.history: list[tuple[int, str]] = []

    def check(self, step: int, loss: float, grad_norm: float) -> list[str]:
        """The alert messages for this step (empty when all is well)."""
        messages = []
        if self.loss_nan and not math.isfinite(loss):
            messages.append(f"loss is {loss}")
        limit = self.grad_norm_threshold
        if limit is not None and limit > 0:
            if not math.isfinite(grad_norm):
                messages.append(f"grad norm is {grad_norm}")
            elif grad_norm > limit:
                messages.append(f"grad norm {grad_norm:.4g} > {limit:g}")
        self.history += [(step, m) for m in messages]
        return messages


def report(step: int, messages: list[str], logger: MetricsLogger | None = None) -> None:
    """Print each alert to stderr and record it as TensorBoard text and a JSONL `alert` record."""
    for message in messages:
        print(f"bittern: ALERT step {step}: {message}", file=sys.stderr, flush=True)
        if logger is not None:
            logger.text(step, "alerts", message)
            logger.log(step, {"alert": message})
