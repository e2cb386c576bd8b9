"""A smaller prepared dataset cut from a large one, spread over all of it, for one GPU call to carry.

A device call carries at most 64 MiB, and the quality benchmark at 50m-125m needs 20-30M tokens, not
the corpus's 150M. This takes `--train-tokens` from the train split in `--chunks` equal chunks spaced
evenly through it (so every package of the corpus is in it, not only the first ones), the first
`--val-tokens` of the val split, the same tokenizer, and writes a dataset `bittern data prepare`
would have written (meta.json with each shard's SHA-256; bytes scaled by the share kept), then
optionally one xz-compressed tar of it to carry (`--tar`; Python's tarfile reads it anywhere).

    PYTHONPATH=. python benchmarks/subset_dataset.py /work/corpus/ds-bpe16k .device-data/ds24m \
        --train-tokens 24000000 --val-tokens 1000000 --tar .device-data/ds24m.tar.xz
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np

from bittern.data.loader import TokenDataset
from bittern.data.shards import ShardWriter


def strided_chunks(ds: TokenDataset, split: str, total: int, chunks: int):
    """`chunks` runs of total // chunks tokens of `split`, starting at evenly spaced offsets."""
    size, have = total // chunks, ds.num_tokens(split)
    if total > have:
        raise SystemExit(f"asked for {total} {split} tokens, the split has {have}")
    for start in np.linspace(0, have - size, chunks).astype(np.int64):
        yield ds.read(split, int(start), size)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--train-tokens", type=int, required=True)
    p.add_argument("--val-tokens", type=int, required=True)
    p.add_argument("--chunks", type=int, default=240)
    p.add_argument("--tar", type=Path, help="also write OUT as one .tar.xz here")
    args = p.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; not overwritten")
    src = TokenDataset(args.source)
    meta = json.loads((args.source / "meta.json").read_text())
    tmp = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copytree(args.source / "tokenizer", tmp / "tokenizer")
    wanted = {"train": args.train_tokens, "val": args.val_tokens}
    for split, n in wanted.items():
        parts = strided_chunks(src, split, n, args.chunks if split == "train" else 1)
        writer = ShardWriter(tmp, split, np.dtype(meta["dtype"]))
        for part in parts:
            writer.write(part)
        shards = writer.close()
        kept = sum(s["tokens"] for s in shards)
        info = meta["splits"][split]
        info["bytes"] = round(info["bytes"] * kept / info["tokens"])
        info["tokens"], info["shards"] = kept, shards
        info.pop("pieces", None)
    meta["subset_of"] = {"source": str(args.source), "chunks": args.chunks}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    TokenDataset(tmp)  # the loader's own checks: hashes, ids, fields
    tmp.rename(args.out)
    print(f"wrote {args.out}: {wanted}")
    if args.tar:
        args.tar.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(args.tar, "w:xz") as tar:
            tar.add(args.out, arcname=args.out.name)
        print(f"wrote {args.tar}: {args.tar.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
