"""The stability guard: decides, after each forward/backward, whether the update may happen.

Non-finite loss or gradients -> skip (nothing the optimizer holds changes). A loss far
above the recent window -> warn, skip or roll back (config). Too many bad steps in a row
-> roll back to the last good checkpoint. Too many rollbacks -> give up.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from bittern.config import GuardConfig

OK, SKIP, ROLLBACK = "ok", "skip", "rollback"
SPIKE_MIN_HISTORY = 10  # losses needed before the detector may fire
SPIKE_STD_FLOOR = 0.01  # nats; keeps a perfectly flat window from flagging noise


class SpikeDetector:
    """Flags a loss above mean + zscore * std of the last `window` accepted losses."""

    def __init__(self, window: int, zscore: float) -> None:
        self.window, self.zscore = window, zscore
        self.history: deque[float] = deque(maxlen=window)

    def threshold(self) -> float:
        if len(self.history) < min(SPIKE_MIN_HISTORY, self.window):
            return math.inf
        n = len(self.history)
        mean = sum(self.history) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / n)
        return mean + self.zscore * max(std, SPIKE_STD_FLOOR)

    def is_spike(self, loss: float) -> bool:
        return loss > self.threshold()

    def accept(self, loss: float) -> None:
        self.history.append(loss)

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = deque(state["history"], maxlen=self.window)


@dataclass
class Verdict:
    action: str  # ok | skip | rollback
    reason: str = ""


class StabilityGuard:
    """Per-step verdicts plus the counters that must survive checkpoints and rollbacks."""

    def __init__(self, cfg: GuardConfig) -> None:
        self.cfg = cfg
        self.spikes = SpikeDetector(cfg.spike_window, cfg.spike_zscore)
        self.bad_in_a_row = 0
        self.skipped_total = 0
        self.spikes_total = 0
        self.rollbacks = 0
        self.lr_factor = 1.0

    def judge(self, loss: float, grads_finite: bool) -> Verdict:
        """Verdict for a step whose loss and gradient finiteness are known (before the update)."""
        if not (math.isfinite(loss) and grads_finite):
            if not self.cfg.skip_nonfinite:
                return Verdict(OK)
            return self._bad(f"non-finite {'loss' if not math.isfinite(loss) else 'gradients'}")
        if self.spikes.is_spike(loss):
            self.spikes_total += 1
            reason = f"loss spike {loss:.4f} > {self.spikes.threshold():.4f}"
            if self.cfg.spike_action == "rollback":
                return Verdict(ROLLBACK, reason)
            if self.cfg.spike_action == "skip":
                return self._bad(reason)
            self.bad_in_a_row = 0
            return Verdict(OK, reason)
        self.bad_in_a_row = 0
        self.spikes.accept(loss)
        return Verdict(OK)

    def _bad(self, reason: str) -> Verdict:
        self.bad_in_a_row += 1
        self.skipped_total += 1
        if self.bad_in_a_row >= self.cfg.max_bad_steps:
            return Verdict(ROLLBACK, f"{reason} ({self.bad_in_a_row} bad steps in a row)")
        return Verdict(SKIP, reason)

    def skip_overflow(self) -> None:
        """Count a step the fp16 loss scaler skipped: skipped, but not bad (no rollback follows)."""
        self.skipped_total += 1

    def begin_rollback(self) -> bool:
        """Count a rollback and lower the LR; False once max_rollbacks is exceeded (give up)."""
        self.rollbacks += 1
        if self.rollbacks > self.cfg.max_rollbacks:
            return False
        self.lr_factor *= self.cfg.rollback_lr_factor
        self.bad_in_a_row = 0
        return True

    def state_dict(self) -> dict:
        return {
            "spikes": self.spikes.state_dict(),
            "bad_in_a_row": self.bad_in_a_row,
            "skipped_total": self.skipped_total,
            "spikes_total": self.spikes_total,
            "rollbacks": self.rollbacks,
            "lr_factor": self.lr_factor,
        }

    def load_state_dict(self, state: dict) -> None:
        self.spikes.load_state_dict(state["spikes"])
        for key in ("bad_in_a_row", "skipped_total", "spikes_total", "rollbacks", "lr_factor"):
            setattr(self, key, state[key])


class PlateauWatch:
    """Counts evaluations without a new best validation loss."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = math.inf
        self.stale = 0

    def update(self, val_loss: float) -> bool:
        """Record an evaluation; True when patience has just run out."""
        if val_loss < self.best:
            self.best, self.stale = val_loss, 0
            return False
        self.stale += 1
        return self.patience > 0 and self.stale == self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "stale": self.stale}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.stale = state["best"], state["stale"]
