"""Writing a split's tokens as flat binary shards, hashing them on the way."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

SHARD_TOKENS = 256 * 1024 * 1024


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every id: uint16 up to 65536 ids, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


class ShardWriter:
    """Appends tokens to `{split}_000.bin`, `{split}_001.bin`, ... of at most `shard_tokens`."""

    def __init__(
        self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int = SHARD_TOKENS
    ) -> None:
        assert shard_tokens > 0
        self.directory = Path(directory)
        self.split = split
        self.dtype = np.dtype(dtype)
        self.shard_tokens = shard_tokens
        self.shards: list[dict] = []
        self._file = None
        self._hash = None
        self._count = 0

    def write(self, tokens: np.ndarray) -> None:
        """Append `tokens`, starting new shards whenever the current one is full."""
        assert tokens.ndim == 1
        assert tokens.size == 0 or int(tokens.max()) <= np.iinfo(self.dtype).max
        tokens = tokens.astype(self.dtype, copy=False)
        while tokens.size:
            if self._file is None or self._count == self.shard_tokens:
                self._open_next()
            take = min(tokens.size, self.shard_tokens - self._count)
            data = tokens[:take].tobytes()
            self._file.write(data)
            self._hash.update(data)
            self._count += take
            tokens = tokens[take:]

    def _open_next(self) -> None:
        """Close the current shard and start the next one."""
        self._close_current()
        name = f"{self.split}_{len(self.shards):03d}.bin"
        self._file = open(self.directory / name, "wb")  # noqa: SIM115
        self._hash = hashlib.sha256()
        self._count = 0
        self.shards.append({"file": name, "tokens": 0, "sha256": ""})

    def _close_current(self) -> None:
        """Finish the open shard's file and record its token count and hash."""
        if self._file is None:
            return
        self._file.close()
        self.shards[-1].update(tokens=self._count, sha256=self._hash.hexdigest())
        self._file = None

    def close(self) -> list[dict]:
        """Finish writing; return the shard list [{file, tokens, sha256}, ...]."""
        self._close_current()
        return self.shards

    @property
    def num_tokens(self) -> int:
        """Tokens written so far."""
        return sum(s["tokens"] for s in self.shards[:-1]) + self._count if self.shards else 0
