"""A prepared dataset decoded back to text and prepared again with another tokenizer, on the device.

The GPU machine gets a dataset tokenized with the corpus's own 16k BPE (`.device-data/ds24m`);
converting SmolLM2 needs the same text in SmolLM2's tokenizer, and a call carries 64 MiB. So the
token shards are decoded on the device: `bittern data prepare` appends EOS after every piece
(up to 64 KiB of text cut after a newline, bittern/data/split.py), so each EOS-delimited run of
tokens is one piece, and a byte-level BPE decodes it to its exact text. The pieces go one per
line into `OUT_TEXT_DIR/pieces.jsonl` (train split first, then val), which is then prepared as
`bittern data prepare OUT_TEXT_DIR/pieces.jsonl --tokenizer TOK --val-fraction F --seed S` would,
with the source's F and S: a JSONL line is one document, a piece of at most 64 KiB stays one
piece, and its split is a hash of its bytes, so every whole piece lands in the split it came
from (the held-out text stays held out; the order of the pieces within a split may change, as
the splitter holds one piece of each split back until a nearer one comes). Only the pieces cut
by the source's own subsetting (benchmarks/subset_dataset.py takes chunks at arbitrary token
offsets) hash anew.

    PYTHONPATH=. python benchmarks/retokenize.py SRC_DATASET OUT_TEXT_DIR \
        [--tokenizer <converted run>/tokenizer --out DATASET]

Without --tokenizer it only writes the text. tests/benchmarks/test_retokenize.py checks that a
dataset decoded and prepared again with its own tokenizer gives back the same tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bittern.data.loader import TokenDataset
from bittern.data.prepare import SPLITS, prepare_dataset
from bittern.errors import BitternError

DECODE_BATCH = 256  # pieces decoded per call of the Rust backend (which spreads them over the cores)
READ_TOKENS = 1 << 24


def split_tokens(ds: TokenDataset, split: str) -> Iterator[np.ndarray]:
    """The EOS-delimited runs of tokens of `split` (EOS dropped), read in large blocks."""
    n, eos, rest = ds.num_tokens(split), ds.eos_id, np.empty(0, np.int64)
    for start in range(0, n, READ_TOKENS):
        block = np.concatenate([rest, ds.read(split, start, min(READ_TOKENS, n - start))])
        ends = np.flatnonzero(block == eos)
        begin = 0
        for end in ends:
            if end > begin:
                yield block[begin:end]
            begin = end + 1
        rest = block[begin:]
    if rest.size:
        yield rest


def decoded_pieces(ds: TokenDataset, split: str) -> Iterator[str]:
    """The text of every EOS-delimited piece of `split`, decoded with the dataset's own tokenizer."""
    tok = ds.tokenizer()
    backend = getattr(tok, "backend", None)
    batch: list[list[int]] = []
    for ids in split_tokens(ds, split):
        batch.append(ids.tolist())
        if len(batch) == DECODE_BATCH:
            yield from _decode(tok, backend, batch)
            batch = []
    yield from _decode(tok, backend, batch)


def _decode(tok, backend, batch: list[list[int]]) -> list[str]:
    if not batch:
        return []
    if backend is None:  # the byte tokenizer
        return [tok.decode(ids) for ids in batch]
    return backend.decode_batch(batch, skip_special_tokens=True)


def write_text(ds: TokenDataset, out_dir: Path) -> tuple[Path, dict]:
    """`out_dir/pieces.jsonl`, one {"text": piece} per line, train then val; (path, pieces per split)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path, counts = out_dir / "pieces.jsonl", {}
    with open(path, "w", encoding="utf-8") as f:
        for split in SPLITS:
            counts[split] = 0
            for text in decoded_pieces(ds, split):
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                counts[split] += 1
    return path, counts


def retokenize(
    src: Path, text_dir: Path, tokenizer: str | None, out: Path | None, progress: bool = False
) -> Path:
    """Decode `src` into `text_dir`; with a tokenizer, prepare it into `out` (same split rule); return
    the dataset folder (or the text file without a tokenizer)."""
    ds = TokenDataset(Path(src))
    path, counts = write_text(ds, Path(text_dir))
    print(f"wrote {path}: {counts['train']} train and {counts['val']} val pieces", flush=True)
    if tokenizer is None:
        return path
    if out is None:
        raise BitternError("retokenize: --tokenizer needs --out")
    return prepare_dataset(
        str(path),
        Path(out),
        tokenizer=tokenizer,
        val_fraction=ds.meta["val_fraction"],
        seed=ds.meta["seed"],
        progress=progress,
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="a prepared dataset folder")
    p.add_argument("text_dir", type=Path, help="folder for pieces.jsonl")
    p.add_argument("--tokenizer", help="tokenizer folder (or .gguf) to prepare the text with")
    p.add_argument("--out", type=Path, help="dataset folder to create (with --tokenizer)")
    args = p.parse_args()
    out = retokenize(args.src, args.text_dir, args.tokenizer, args.out, progress=True)
    print(f"prepared {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
