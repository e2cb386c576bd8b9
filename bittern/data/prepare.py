"""Turn a text source into tokenized, memory-mappable train/val shards plus meta.json."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bittern.data.shards import SHARD_TOKENS, ShardWriter, token_dtype
from bittern.data.sources import DEFAULT_CACHE, Corpus, open_corpus
from bittern.data.split import PIECE_BYTES, SPLIT_RULE, Routed, Splitter, split_pieces
from bittern.data.tokenizer import Tokenizer, build_tokenizer
from bittern.errors import BitternError

FORMAT_VERSION = 1
META_FILE = "meta.json"
SPLITS = ("train", "val")
BUILTIN_SOURCES = ("shakespeare",)
_ENCODE_BATCH_BYTES = 2 * 1024 * 1024
TOKENIZER_SAMPLE_BYTES = 256 * 1024 * 1024


def prepare_dataset(
    source: str,
    out_dir: Path,
    tokenizer: str = "byte",
    vocab_size: int = 8192,
    val_fraction: float = 0.05,
    seed: int = 0,
    text_field: str = "text",
    overwrite: bool = False,
    cache_dir: Path | None = None,
    progress: bool = True,
    shard_tokens: int = SHARD_TOKENS,
    tokenizer_sample_bytes: int = TOKENIZER_SAMPLE_BYTES,
) -> Path:
    """Tokenize `source` into `out_dir` (train/val shards, meta.json, tokenizer/); return it.

    Streams: the corpus is read block by block (once to train a BPE tokenizer on a sample of the
    train pieces, once to tokenize), tokenized in batches and written shard by shard, so memory
    does not grow with the corpus. The split depends only on each piece's bytes and `seed`. The
    dataset is built in a temporary sibling folder and renamed into place.
    """
    out_dir = Path(out_dir).expanduser()
    _check_out_dir(out_dir, overwrite)
    Splitter(val_fraction, seed)  # refuse a bad fraction before reading anything
    if tokenizer_sample_bytes <= 0:
        raise BitternError(f"the tokenizer sample must be at least 1 byte, got {tokenizer_sample_bytes}")
    corpus = open_corpus(source, text_field, cache_dir)
    sample = _Sample(corpus, val_fraction, seed, tokenizer_sample_bytes, progress)
    tok = build_tokenizer(tokenizer, sample.texts, vocab_size)
    if tok.eos_id is None:
        raise BitternError(f"tokenizer {tokenizer!r} has no EOS token to separate documents")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the finished dataset is an ordinary folder
    try:
        tok.save(tmp / "tokenizer")
        reader = _Reader(corpus, "tokenizing", progress)
        with reader.bar:
            pieces = split_pieces(reader.blocks(), val_fraction, seed)
            splits = _write_splits(pieces, tok, tmp, shard_tokens)
        meta = {
            "format_version": FORMAT_VERSION,
            "source": source,
            "text_field": text_field,
            "tokenizer": tok.identity(),
            "dtype": token_dtype(tok.vocab_size).name,
            "vocab_size": tok.vocab_size,
            "eos_id": tok.eos_id,
            "seed": seed,
            "val_fraction": val_fraction,
            "piece_bytes": PIECE_BYTES,
            "split_rule": SPLIT_RULE,
            "tokenizer_sample_bytes": sample.taken if tokenizer == "bpe" else None,
            "documents": reader.documents,
            "splits": splits,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _move_into_place(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace a file, or a non-empty folder unless `overwrite`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise BitternError(f"output path exists and is not a folder: {out_dir}")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise BitternError(f"output folder is not empty: {out_dir} (pass --overwrite to replace it)")


class _Reader:
    """Reads a corpus's blocks behind a progress bar (with ETA when the size is known), counting documents."""

    def __init__(self, corpus: Corpus, desc: str, progress: bool) -> None:
        self.corpus = corpus
        self.documents = 0
        unit_scale = corpus.unit == "B"
        self.bar = tqdm(
            total=corpus.total, unit=corpus.unit, unit_scale=unit_scale, desc=desc, disable=not progress
        )

    def blocks(self) -> Iterator[bytes]:
        """The corpus's text blocks; the bar advances as each one is consumed."""
        for block in self.corpus.blocks():
            self.documents += block.starts_document
            yield block.data
            self.bar.update(block.advance)


class _Sample:
    """The train pieces a BPE tokenizer learns from: all of them, or about `limit` bytes of them.

    With the corpus size known in bytes, the sample is the train pieces whose hash position is
    in the lowest `limit / total` of the train range, which spreads it over the whole corpus;
    otherwise (a streamed dataset) it is the first `limit` bytes of train pieces.
    """

    def __init__(self, corpus: Corpus, val_fraction: float, seed: int, limit: int, progress: bool) -> None:
        self.corpus = corpus
        self.val_fraction = val_fraction
        self.seed = seed
        self.limit = limit
        self.progress = progress
        self.taken = 0

    def texts(self) -> Iterator[str]:
        """Decoded sample pieces, in corpus order."""
        self.taken = 0
        rate = 1.0
        if self.corpus.unit == "B" and self.corpus.total:
            rate = min(1.0, self.limit / self.corpus.total)
        cutoff = self.val_fraction + rate * (1.0 - self.val_fraction)
        reader = _Reader(self.corpus, "tokenizer sample", self.progress)
        with reader.bar:
            for routed in split_pieces(reader.blocks(), self.val_fraction, self.seed):
                if routed.split != "train" or routed.position >= cutoff:
                    continue
                self.taken += len(routed.piece)
                yield routed.piece.decode("utf-8", errors="replace")
                if self.taken >= self.limit:
                    return


def _write_splits(pieces: Iterator[Routed], tok: Tokenizer, directory: Path, shard_tokens: int) -> dict:
    """Tokenize every piece (EOS appended) in batches into its split's shards; return per-split stats."""
    dtype = token_dtype(tok.vocab_size)
    writers = {s: ShardWriter(directory, s, dtype, shard_tokens) for s in SPLITS}
    stats = {s: {"bytes": 0, "pieces": 0} for s in SPLITS}
    batch: list[Routed] = []
    size = 0
    for routed in pieces:
        batch.append(routed)
        size += len(routed.piece)
        if size >= _ENCODE_BATCH_BYTES:
            _flush(batch, tok, writers, stats)
            batch, size = [], 0
    _flush(batch, tok, writers, stats)
    return {s: {"tokens": writers[s].num_tokens, **stats[s], "shards": writers[s].close()} for s in SPLITS}


def _flush(batch: list[Routed], tok: Tokenizer, writers: dict, stats: dict) -> None:
    """Encode a batch of pieces and append each one's tokens plus EOS to its split."""
    encoded = tok.encode_batch([r.piece.decode("utf-8", errors="replace") for r in batch])
    flat: dict[str, list[int]] = {s: [] for s in SPLITS}
    for routed, ids in zip(batch, encoded, strict=True):
        flat[routed.split] += ids
        flat[routed.split].append(tok.eos_id)
        stats[routed.split]["bytes"] += len(routed.piece)
        stats[routed.split]["pieces"] += 1
    for split, ids in flat.items():
        if ids:
            writers[split].write(np.asarray(ids, dtype=np.int64))


def _move_into_place(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename the finished `tmp` folder to `out_dir`, replacing an old one only if allowed."""
    _check_out_dir(out_dir, overwrite)
    if not out_dir.exists():
        tmp.rename(out_dir)
        return
    trash = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
    out_dir.rename(trash / "old")
    tmp.rename(out_dir)
    shutil.rmtree(trash, ignore_errors=True)


def builtin_dataset_dir(
    source: str, tokenizer: str, vocab_size: int, val_fraction: float, seed: int, root: Path
) -> Path:
    """Cache folder whose name encodes every parameter of a built-in dataset."""
    params = [FORMAT_VERSION, source, tokenizer, vocab_size, val_fraction, seed, PIECE_BYTES, SPLIT_RULE]
    digest = hashlib.sha256(json.dumps(params).encode()).hexdigest()[:10]
    kind = tokenizer if tokenizer in ("byte", "bpe") else "hf"
    vocab = f"{vocab_size}" if tokenizer == "bpe" else ""
    return root / "datasets" / f"{source}-{kind}{vocab}-s{seed}-{digest}"


def ensure_builtin_dataset(
    source: str = "shakespeare",
    tokenizer: str = "byte",
    vocab_size: int = 8192,
    val_fraction: float = 0.05,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> Path:
    """Prepare a built-in corpus once under `cache_dir` (default ~/.cache/bittern); reuse it.

    Layout under the cache root: `sources/<name>/` (raw texts), `datasets/<name>-...` (shards).
    """
    if source not in BUILTIN_SOURCES:
        raise BitternError(f"unknown built-in data source {source!r}: expected {BUILTIN_SOURCES}")
    root = Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE.expanduser()
    out_dir = builtin_dataset_dir(source, tokenizer, vocab_size, val_fraction, seed, root)
    expected = {"format_version": FORMAT_VERSION, "source": source, "seed": seed}
    expected.update(val_fraction=val_fraction, split_rule=SPLIT_RULE)
    if _meta_matches(out_dir, expected):
        return out_dir
    try:
        prepare_dataset(
            source,
            out_dir,
            tokenizer=tokenizer,
            vocab_size=vocab_size,
            val_fraction=val_fraction,
            seed=seed,
            overwrite=out_dir.exists(),
            cache_dir=root / "sources" / source,
            progress=progress,
        )
    except BitternError:
        if _meta_matches(out_dir, expected):  # another process finished it first
            return out_dir
        raise
    return out_dir


def _meta_matches(out_dir: Path, expected: dict) -> bool:
    """Whether `out_dir` holds a finished dataset whose meta.json has the `expected` fields."""
    try:
        meta = json.loads((out_dir / META_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and all(meta.get(k) == v for k, v in expected.items())
