"""Reading prepared token shards: stateless random train batches and fixed val batches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from bittern.data.prepare import FORMAT_VERSION, META_FILE, SPLITS
from bittern.data.shards import verify_shards
from bittern.data.tokenizer import Tokenizer, load_tokenizer
from bittern.errors import BitternError


class TokenDataset:
    """A prepared dataset folder: memory-mapped shards of each split plus its meta.json."""

    def __init__(self, path: Path, verify: bool = True) -> None:
        """Open the dataset at `path`; `verify` checks every shard's hash and ids (once per file)."""
        self.path = Path(path)
        self.meta = _read_meta(self.path / META_FILE)
        self.vocab_size: int = self.meta["vocab_size"]
        self.eos_id: int | None = self.meta["eos_id"]
        self.tokenizer_identity: dict = self.meta["tokenizer"]
        self.dtype = np.dtype(self.meta["dtype"])
        self._shards = {s: self._open_split(s, self.dtype) for s in SPLITS}
        if verify:
            self.verify()
        self._starts = {s: np.cumsum([0] + [len(m) for m in self._shards[s]]) for s in SPLITS}

    def _open_split(self, split: str, dtype: np.dtype) -> list[np.memmap]:
        """Memory-map every shard of `split`, checking its size against meta.json."""
        maps = []
        for shard in self.meta["splits"][split]["shards"]:
            file = self.path / shard["file"]
            if not file.is_file():
                raise BitternError(f"missing shard {file}")
            if file.stat().st_size != shard["tokens"] * dtype.itemsize:
                raise BitternError(f"shard {file} has the wrong size for {shard['tokens']} tokens")
            if shard["tokens"] > 0:
                maps.append(np.memmap(file, dtype=dtype, mode="r", shape=(shard["tokens"],)))
        return maps

    def verify(self) -> None:
        """Check every shard against meta.json's SHA-256 and the vocabulary (see verify_shards)."""
        shards = [shard for split in SPLITS for shard in self.meta["splits"][split]["shards"]]
        verify_shards(self.path, shards, self.dtype, self.vocab_size)

    def num_tokens(self, split: str) -> int:
        """Number of tokens (EOS included) in `split`."""
        return int(self._starts[_check_split(split)][-1])

    def bytes_per_token(self, split: str) -> float:
        """UTF-8 text bytes per token of `split`, to turn nats/token into bits/byte."""
        return self.meta["splits"][_check_split(split)]["bytes"] / self.num_tokens(split)

    def tokenizer(self) -> Tokenizer:
        """The tokenizer the dataset was made with."""
        return load_tokenizer(self.path / "tokenizer")

    def check_tokenizer(self, identity: dict) -> None:
        """Raise if `identity` is not the identity of this dataset's tokenizer."""
        if identity != self.tokenizer_identity:
            raise BitternError(
                f"tokenizer mismatch: dataset {self.path} was tokenized with "
                f"{self.tokenizer_identity}, got {identity}"
            )

    def read(self, split: str, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) of `split`, read across shard boundaries."""
        starts = self._starts[split]
        assert 0 <= start and start + length <= starts[-1]
        out = np.empty(length, dtype=np.int64)
        pos = start
        while pos < start + length:
            k = int(np.searchsorted(starts, pos, side="right")) - 1
            take = min(start + length, int(starts[k + 1])) - pos
            out[pos - start : pos - start + take] = self._shards[split][k][pos - starts[k] :][:take]
            pos += take
        return out

    def train_batch(
        self,
        seed: int,
        step: int,
        batch_size: int,
        seq_len: int,
        start: int = 0,
        count: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [start, start+count) of the global batch of optimizer step `step`.

        The global batch is `batch_size` random windows of seq_len+1 train tokens whose offsets
        come from an RNG seeded by (seed, step) only, so any rank, micro-batch split or resumed
        run sees the same data. Returns (inputs, targets), each (count, seq_len) int64.
        """
        if seed < 0 or step < 0:
            raise BitternError(f"seed and step must be >= 0, got seed={seed} step={step}")
        count = batch_size - start if count is None else count
        if not (0 <= start and count >= 0 and start + count <= batch_size):
            raise BitternError(f"rows [{start}, {start}+{count}) are outside batch {batch_size}")
        n = self._need(seq_len, "train")
        offsets = np.random.default_rng([seed, step]).integers(0, n - seq_len, size=batch_size)
        windows = [self.read("train", int(o), seq_len + 1) for o in offsets[start : start + count]]
        return _to_inputs_targets(windows, seq_len)

    def val_batches(
        self, seq_len: int, batch_size: int, max_batches: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive, non-overlapping windows over the val split, `batch_size` per batch.

        Window i covers inputs [i*seq_len, (i+1)*seq_len); the last batch may be smaller (it
        is kept, so every full window is evaluated); tokens after the last full window are
        unused. Same batches on every call.
        """
        n = self._need(seq_len, "val")
        num_windows = (n - 1) // seq_len
        num_batches = -(-num_windows // batch_size)
        if max_batches is not None:
            num_batches = min(num_batches, max_batches)
        for b in range(num_batches):
            rows = range(b * batch_size, min((b + 1) * batch_size, num_windows))
            yield self.val_window_batch(seq_len, rows)

    def val_window_batch(self, seq_len: int, rows: range) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of val windows `rows`; window i covers inputs [i*seq_len, (i+1)*seq_len)."""
        return _to_inputs_targets([self.read("val", i * seq_len, seq_len + 1) for i in rows], seq_len)

    def _need(self, seq_len: int, split: str) -> int:
        """Token count of `split`, raising if it cannot fill one window of seq_len+1."""
        if seq_len < 1:
            raise BitternError(f"seq_len must be >= 1, got {seq_len}")
        n = self.num_tokens(split)
        if n < seq_len + 1:
            raise BitternError(
                f"{split} split of {self.path} has {n} tokens, fewer than seq_len+1={seq_len + 1}"
            )
        return n


def _to_inputs_targets(windows: list[np.ndarray], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack windows of seq_len+1 tokens into (inputs, targets) shifted by one."""
    batch = torch.from_numpy(np.stack(windows)) if windows else torch.empty(0, seq_len + 1)
    batch = batch.long()
    return batch[:, :-1], batch[:, 1:]


def _check_split(split: str) -> str:
    """`split` if it is a known split name."""
    if split not in SPLITS:
        raise BitternError(f"unknown split {split!r}: expected one of {SPLITS}")
    return split


def _read_meta(path: Path) -> dict:
    """Load and sanity-check a dataset's meta.json."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise BitternError(f"not a prepared dataset: {path} is missing") from e
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BitternError(f"malformed dataset meta {path}: {e}") from e
    required = ("format_version", "vocab_size", "eos_id", "tokenizer", "dtype", "splits")
    missing = [k for k in required if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise BitternError(f"malformed dataset meta {path}: missing {missing}")
    if meta["format_version"] != FORMAT_VERSION:
        raise BitternError(
            f"{path}: dataset format {meta['format_version']}, expected {FORMAT_VERSION}; prepare it again"
        )
    problem = _meta_problem(meta)
    if problem:
        raise BitternError(f"malformed dataset meta {path}: {problem}")
    return meta


def _meta_problem(meta: dict) -> str | None:
    """What is wrong with the fields the loader reads, or None."""
    vocab, eos = meta["vocab_size"], meta["eos_id"]
    if not isinstance(vocab, int) or vocab < 1:
        return f"vocab_size must be a positive integer, got {vocab!r}"
    if eos is not None and not (isinstance(eos, int) and 0 <= eos < vocab):
        return f"eos_id {eos!r} is not an id of the {vocab}-token vocabulary"
    if meta["dtype"] not in ("uint16", "uint32") or vocab - 1 > np.iinfo(meta["dtype"]).max:
        return f"dtype {meta['dtype']!r} cannot hold {vocab} token ids"
    splits = meta["splits"]
    if not isinstance(splits, dict) or any(not isinstance(splits.get(s), dict) for s in SPLITS):
        return f"splits must include {SPLITS}"
    for split in SPLITS:
        shards = splits[split].get("shards")
        if not isinstance(splits[split].get("bytes"), int) or not isinstance(shards, list):
            return f"split {split!r} needs 'bytes' and a 'shards' list"
        for shard in shards:
            if not _is_shard_entry(shard):
                return f"bad shard entry in split {split!r}: {shard!r}"
    return None


def _is_shard_entry(shard: object) -> bool:
    """A {file, tokens, sha256} entry naming a file inside the dataset folder."""
    if not isinstance(shard, dict):
        return False
    file, tokens, sha = shard.get("file"), shard.get("tokens"), shard.get("sha256")
    plain_name = isinstance(file, str) and file not in ("", ".", "..") and Path(file).name == file
    return plain_name and isinstance(tokens, int) and tokens >= 0 and isinstance(sha, str)
