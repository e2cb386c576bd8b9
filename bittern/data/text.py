"""Telling text from binary: a sample of bytes is text when almost all of it is valid, printable UTF-8."""

from __future__ import annotations

from bittern.errors import BitternError

SAMPLE_BYTES = 64 * 1024
MAX_BAD_SHARE = 0.01
# C0 controls and DEL, less tab, newline, vertical tab, form feed, carriage return and escape
_CONTROL = bytes(b for b in range(32) if b not in b"\t\n\v\f\r\x1b") + b"\x7f"


def bad_share(sample: bytes) -> float:
    """Share of `sample`'s bytes that are NUL or other control bytes or not valid UTF-8."""
    if not sample:
        return 0.0
    controls = len(sample) - len(sample.translate(None, _CONTROL))
    decoded = sample.decode("utf-8", errors="replace")
    # a sample cut mid-character ends in up to 3 stray bytes: not held against it
    invalid = decoded.count("\ufffd") - sample.count("\ufffd".encode())
    invalid -= min(invalid, decoded[-3:].count("\ufffd"))
    return (controls + max(invalid, 0)) / len(sample)


def is_text(sample: bytes) -> bool:
    """Whether `sample` reads as UTF-8 text: at most 1% of its bytes are control or invalid."""
    return bad_share(sample) <= MAX_BAD_SHARE


def check_text(sample: bytes, where: str) -> None:
    """Raise BitternError naming `where` when `sample` is not UTF-8 text."""
    share = bad_share(sample)
    if share > MAX_BAD_SHARE:
        raise BitternError(
            f"{where} is not text: {share:.0%} of its first {len(sample)} bytes are NUL, control or"
            " invalid UTF-8 bytes (bittern reads UTF-8 text)"
        )
