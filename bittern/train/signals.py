"""SIGTERM/SIGINT during training: finish the step, checkpoint, exit with EXIT_PREEMPTED."""

from __future__ import annotations

import signal
import threading
from types import FrameType

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped cleanly after a checkpoint; rerun with --resume
EXIT_GAVE_UP = 3  # the stability guard exhausted its rollbacks


class StopRequest:
    """Catches SIGTERM and SIGINT while active and records that training should stop."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
