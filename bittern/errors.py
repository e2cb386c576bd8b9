"""The one exception type for problems a user can cause (bad config, data, paths)."""


class BitternError(Exception):
    """A user-facing error; the CLI prints it as one line and exits non-zero."""
