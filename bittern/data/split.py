"""Deterministic, streaming train/validation split: text cut into pieces, each piece placed by its hash.

A piece goes to validation when the hash of (seed, its bytes) falls below `val_fraction`, so the split
needs no pass over the whole corpus, holds nothing but the piece at hand, and puts identical pieces
(licence texts copied into many packages, say) on the same side. The only state is one held-back piece
per split, which guarantees that each split gets at least one piece.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from bittern.errors import BitternError

PIECE_BYTES = 64 * 1024
SPLIT_RULE = "piece-hash-v2"


def cut_pieces(data: bytes, max_bytes: int = PIECE_BYTES) -> list[bytes]:
    """Cut UTF-8 `data` after newlines into pieces of at most `max_bytes` bytes.

    Greedy: each piece takes as many whole lines as fit. A single line longer than `max_bytes`
    becomes a piece of its own; joining the pieces gives `data` back.
    """
    pieces: list[bytes] = []
    start, end = 0, len(data)
    while end - start > max_bytes:
        cut = data.rfind(b"\n", start, start + max_bytes) + 1
        if cut <= start:  # the line at `start` is longer than max_bytes: it stays whole
            cut = data.find(b"\n", start + max_bytes) + 1 or end
        pieces.append(data[start:cut])
        start = cut
    if start < end:
        pieces.append(data[start:end])
    return pieces


def iter_pieces(blocks: Iterable[bytes], max_bytes: int = PIECE_BYTES) -> Iterator[bytes]:
    """All pieces of all text blocks, in order (no piece spans two blocks)."""
    for block in blocks:
        yield from cut_pieces(block, max_bytes)


def piece_position(piece: bytes, seed: int) -> float:
    """Where `piece` falls in [0, 1) under `seed`: uniform, reproducible, set by its bytes alone."""
    digest = hashlib.sha256(seed.to_bytes(8, "little", signed=True) + piece).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


class Routed(NamedTuple):
    """A piece, the split it goes to, and its `piece_position`."""

    split: str
    piece: bytes
    position: float


class Splitter:
    """Routes pieces to "train" or "val" by `piece_position`, keeping both splits non-empty.

    Each split holds back one piece: train the one nearest the validation side, val the one
    nearest the train side. `finish` releases them, moving one across if a split would be empty.
    """

    def __init__(self, val_fraction: float, seed: int) -> None:
        if not 0.0 < val_fraction < 1.0:
            raise BitternError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
        self.val_fraction = val_fraction
        self.seed = seed
        self.pieces = 0
        self._held: dict[str, Routed | None] = {"train": None, "val": None}

    def route(self, piece: bytes) -> list[Routed]:
        """The pieces that can be written now that `piece` has been seen."""
        position = piece_position(piece, self.seed)
        self.pieces += 1
        split = "val" if position < self.val_fraction else "train"
        routed = Routed(split, piece, position)
        held = self._held[split]
        if held is None:
            self._held[split] = routed
            return []
        nearer = position < held.position if split == "train" else position > held.position
        if nearer:
            self._held[split] = routed
            return [held]
        return [routed]

    def finish(self) -> list[Routed]:
        """The held-back pieces, each in its final split; raises if there are fewer than 2 pieces."""
        if self.pieces < 2:
            raise BitternError(
                f"corpus too small to split into train and validation: {self.pieces} piece(s)"
                f" of up to {PIECE_BYTES} bytes; need at least 2"
            )
        train, val = self._held["train"], self._held["val"]
        if val is None:  # every piece hashed to train: the one nearest validation moves over
            return [train._replace(split="val")]
        if train is None:
            return [val._replace(split="train")]
        return [train, val]


def split_pieces(blocks: Iterable[bytes], val_fraction: float, seed: int) -> Iterator[Routed]:
    """Every piece of the text `blocks` with its split, in the order they can be written."""
    splitter = Splitter(val_fraction, seed)
    for piece in iter_pieces(blocks):
        yield from splitter.route(piece)
    yield from splitter.finish()
