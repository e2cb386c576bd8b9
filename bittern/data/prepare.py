"""Turn a text source into tokenized, memory-mappable train/val shards plus meta.json."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bittern.data.shards import SHARD_TOKENS, ShardWriter, token_dtype
from bittern.data.sources import DEFAULT_CACHE, iter_documents
from bittern.data.split import PIECE_BYTES, choose_validation, cut_pieces, iter_pieces
from bittern.data.tokenizer import Tokenizer, build_tokenizer
from bittern.errors import BitternError

FORMAT_VERSION = 1
META_FILE = "meta.json"
SPLITS = ("train", "val")
BUILTIN_SOURCES = ("shakespeare",)
_ENCODE_BATCH = 64


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
) -> Path:
    """Tokenize `source` into `out_dir` (train/val shards, meta.json, tokenizer/); return it.

    The split depends only on the corpus and `seed`; a BPE tokenizer is trained on the train
    pieces only. The dataset is built in a temporary sibling folder and renamed into place.
    """
    out_dir = Path(out_dir).expanduser()
    _check_out_dir(out_dir, overwrite)
    documents = lambda: iter_documents(source, text_field, cache_dir)
    piece_bytes, num_documents = _measure(documents())
    val = choose_validation(piece_bytes, val_fraction, seed)
    train_texts = lambda: (p for i, p in enumerate(iter_pieces(documents())) if i not in val)
    tok = build_tokenizer(tokenizer, train_texts, vocab_size)
    if tok.eos_id is None:
        raise BitternError(f"tokenizer {tokenizer!r} has no EOS token to separate documents")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the finished dataset is an ordinary folder
    try:
        tok.save(tmp / "tokenizer")
        bar = tqdm(total=num_documents, unit="doc", desc="tokenizing", disable=not progress)
        with bar:
            splits = _write_splits(documents(), val, tok, tmp, shard_tokens, bar.update)
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
            "documents": num_documents,
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


def _measure(documents: Iterator[str]) -> tuple[list[int], int]:
    """UTF-8 sizes of all pieces, and the number of documents."""
    sizes: list[int] = []
    count = 0
    for text in documents:
        count += 1
        sizes.extend(len(p.encode("utf-8")) for p in cut_pieces(text))
    return sizes, count


def _write_splits(
    documents: Iterator[str],
    val: set[int],
    tok: Tokenizer,
    directory: Path,
    shard_tokens: int,
    advance: Callable[[int], object],
) -> dict:
    """Tokenize every piece (EOS appended) into its split's shards; return per-split stats."""
    dtype = token_dtype(tok.vocab_size)
    writers = {s: ShardWriter(directory, s, dtype, shard_tokens) for s in SPLITS}
    stats = {s: {"bytes": 0, "pieces": 0} for s in SPLITS}
    index = 0
    batch: list[tuple[str, str]] = []
    for text in documents:
        for piece in cut_pieces(text):
            batch.append(("val" if index in val else "train", piece))
            index += 1
        if len(batch) >= _ENCODE_BATCH:
            _flush(batch, tok, writers, stats)
            batch = []
        advance(1)
    _flush(batch, tok, writers, stats)
    return {s: {"tokens": writers[s].num_tokens, **stats[s], "shards": writers[s].close()} for s in SPLITS}


def _flush(batch: list[tuple[str, str]], tok: Tokenizer, writers: dict, stats: dict) -> None:
    """Encode a batch of (split, piece) pairs and append each piece's tokens plus EOS."""
    encoded = tok.encode_batch([piece for _, piece in batch])
    for (split, piece), ids in zip(batch, encoded, strict=True):
        ids.append(tok.eos_id)
        writers[split].write(np.asarray(ids, dtype=np.int64))
        stats[split]["bytes"] += len(piece.encode("utf-8"))
        stats[split]["pieces"] += 1


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
    params = [FORMAT_VERSION, source, tokenizer, vocab_size, val_fraction, seed, PIECE_BYTES]
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
    expected["val_fraction"] = val_fraction
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
