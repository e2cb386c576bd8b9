"""Alerts: loss NaN/Inf and gradient-norm blow-ups, shouted to stderr, TensorBoard and JSONL.

A gradient norm alerts when it is a spike for this run: more than `grad_norm_spike` times the
median of the run's last `window` gradient norms, once the LR warmup is over. Norms differ by
orders of magnitude between models and through training, so a fixed threshold fires on healthy
runs (the built-in job's first steps have norms above 10, and while its LR warms up single steps
reach 5x the median of the steps before; clipping takes care of those); the median over a window
is robust to the spikes it looks for.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections import deque

from tqdm.auto import tqdm

from bittern.monitor.metrics import MetricsLogger

SPIKE_WINDOW = 50  # recent gradient norms the spike rule compares against
SPIKE_MIN_HISTORY = 20  # norms needed before it may fire (the first steps set the scale)


class Alerts:
    """Checks a step's loss and gradient norm against the alert rules; remembers what fired.

    `grad_norm_spike`: alert above this multiple of the recent median (0/None: off), at steps
    after `quiet_until` (the warmup); `grad_norm_threshold`: above this absolute norm (0/None: off).
    """

    def __init__(
        self,
        loss_nan: bool = True,
        grad_norm_threshold: float | None = None,
        grad_norm_spike: float | None = 5.0,
        window: int = SPIKE_WINDOW,
        min_history: int = SPIKE_MIN_HISTORY,
        quiet_until: int = 0,
    ) -> None:
        self.loss_nan = loss_nan
        self.grad_norm_threshold = grad_norm_threshold
        self.grad_norm_spike = grad_norm_spike
        self.min_history = min(min_history, window)
        self.quiet_until = quiet_until
        self.norms: deque[float] = deque(maxlen=window)
        self.history: list[tuple[int, str]] = []

    def check(self, step: int, loss: float, grad_norm: float) -> list[str]:
        """The alert messages for this step (empty when all is well)."""
        messages = []
        if self.loss_nan and not math.isfinite(loss):
            messages.append(f"loss is {loss}")
        if not math.isfinite(grad_norm):
            if self.grad_norm_spike or self.grad_norm_threshold:
                messages.append(f"grad norm is {grad_norm}")
        else:
            messages += self._grad_norm(step, grad_norm)
            self.norms.append(grad_norm)
        self.history += [(step, m) for m in messages]
        return messages

    def _grad_norm(self, step: int, norm: float) -> list[str]:
        limit = self.grad_norm_threshold
        if limit and norm > limit:
            return [f"grad norm {norm:.4g} > {limit:g}"]
        if self.grad_norm_spike and step > self.quiet_until and len(self.norms) >= self.min_history:
            median = statistics.median(self.norms)
            if norm > self.grad_norm_spike * median:
                return [
                    f"grad norm {norm:.4g} is {norm / median:.1f}x the median {median:.4g} "
                    f"of the last {len(self.norms)} steps"
                ]
        return []


def report(step: int, messages: list[str], logger: MetricsLogger | None = None) -> None:
    """Print each alert to stderr (above any progress bar) and record it as TensorBoard text and a
    JSONL `alert` record."""
    for message in messages:
        tqdm.write(f"bittern: ALERT step {step}: {message}", file=sys.stderr)
        if logger is not None:
            logger.text(step, "alerts", message)
            logger.log(step, {"alert": message})
