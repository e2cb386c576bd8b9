"""Flat binary token shards: writing them (hashing on the way) and checking them when read."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from bittern.errors import BitternError

SHARD_TOKENS = 256 * 1024 * 1024
VERIFIED_FILE = ".verified.json"
_READ_BYTES = 1 << 24  # a multiple of every token dtype's size


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


def verify_shards(directory: Path, shards: list[dict], dtype: np.dtype, vocab_size: int) -> None:
    """Raise unless every shard's SHA-256 matches its meta.json entry and its ids are < vocab_size.

    Each file is read once: the verdict is kept in `directory/.verified.json`, keyed by the
    file's size, mtime and ctime (which no user call can set back), so an unchanged dataset
    costs one stat per shard and a shard written since is read again. A read-only dataset
    folder is checked in full each time.
    """
    directory = Path(directory)
    known = _read_verdicts(directory / VERIFIED_FILE)
    verdicts = {}
    for shard in shards:
        file = directory / shard["file"]
        stamp = _stamp(file)
        verdict = {"stamp": stamp, "sha256": shard["sha256"], "vocab_size": vocab_size}
        if known.get(shard["file"]) != verdict:
            _check_shard(file, shard["sha256"], np.dtype(dtype), vocab_size)
            if _stamp(file) != stamp:
                continue  # written while it was read: judge it again next time
        verdicts[shard["file"]] = verdict
    if verdicts != known:
        _write_verdicts(directory / VERIFIED_FILE, verdicts)


def _check_shard(file: Path, sha256: str, dtype: np.dtype, vocab_size: int) -> None:
    """One pass over `file`: its SHA-256 against `sha256`, its largest id against vocab_size."""
    digest, top = hashlib.sha256(), -1
    with file.open("rb") as f:
        while chunk := f.read(_READ_BYTES):
            digest.update(chunk)
            top = max(top, int(np.frombuffer(chunk, dtype=dtype).max()))
    if digest.hexdigest() != sha256:
        raise BitternError(
            f"shard {file} is corrupt: its SHA-256 does not match meta.json; prepare the dataset again"
        )
    if top >= vocab_size:
        raise BitternError(f"shard {file} holds token id {top}, outside the vocabulary of {vocab_size}")


def _stamp(file: Path) -> list[int]:
    """What changes whenever the file's contents do: size, mtime and ctime in nanoseconds."""
    try:
        st = file.stat()
    except FileNotFoundError as e:
        raise BitternError(f"missing shard {file}") from e
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _read_verdicts(path: Path) -> dict:
    """The shards found good before, {file: verdict}; empty when there is no readable record."""
    try:
        verdicts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return verdicts if isinstance(verdicts, dict) else {}


def _write_verdicts(path: Path, verdicts: dict) -> None:
    """Replace the record atomically; a folder we cannot write to just keeps no record."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(verdicts, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
