"""Deterministic train/validation split: documents cut into pieces, pieces ranked by hash."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from bittern.errors import BitternError

PIECE_BYTES = 64 * 1024


def cut_pieces(text: str, max_bytes: int = PIECE_BYTES) -> list[str]:
    """Cut `text` at line boundaries into pieces of at most ~`max_bytes` UTF-8 bytes.

    A single line longer than `max_bytes` stays whole; joining the pieces gives `text` back.
    """
    if len(text.encode("utf-8")) <= max_bytes:
        return [text]
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        n = len(line.encode("utf-8"))
        if current and size + n > max_bytes:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += n
    if current:
        pieces.append("".join(current))
    return pieces


def iter_pieces(documents: Iterable[str], max_bytes: int = PIECE_BYTES) -> Iterator[str]:
    """All pieces of all documents, in corpus order."""
    for text in documents:
        yield from cut_pieces(text, max_bytes)


def _rank_key(seed: int, index: int) -> bytes:
    """Pseudo-random but reproducible sort key of piece `index` under `seed`."""
    return hashlib.sha256(f"{seed}:{index}".encode()).digest()


def choose_validation(piece_bytes: list[int], val_fraction: float, seed: int) -> set[int]:
    """Indices of the pieces that go to validation: about `val_fraction` of all bytes.

    Pieces are taken in order of hash(seed, index) until the byte target is reached; each
    split keeps at least one piece.
    """
    if not 0.0 < val_fraction < 1.0:
        raise BitternError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(piece_bytes) < 2:
        raise BitternError(
            f"corpus too small to split into train and validation: {len(piece_bytes)} piece(s)"
            f" of up to {PIECE_BYTES} bytes; need at least 2"
        )
    target = val_fraction * sum(piece_bytes)
    order = sorted(range(len(piece_bytes)), key=lambda i: _rank_key(seed, i))
    chosen: set[int] = set()
    taken = 0
    for index in order[:-1]:
        if chosen and taken >= target:
            break
        chosen.add(index)
        taken += piece_bytes[index]
    return chosen
