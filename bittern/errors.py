"""The one exception type for problems a user can cause (bad config, data, paths)."""


class BitternError(Exception):
    """A user-facing error; the CLI prints it as one line and exits non-zero."""


class TrainingStopped(Exception):
    """Training ended early on purpose (signal, guard gave up); carries the exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
