"""Export file sizes (bits per parameter) of the 125m and 1b presets, per format. JSON out.

A freshly initialised model is enough: sizes do not depend on the values. The GGUF rows use
the llama.cpp-compatible variant (sub-layer norms, tied embeddings).

    PYTHONPATH=. python benchmarks/export_sizes.py --out r.json [--presets 125m,1b]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from bittern.checkpoint import save_checkpoint
from bittern.config import Config, to_toml
from bittern.data.tokenizer import ByteTokenizer
from bittern.export import export_run
from bittern.models import ModelConfig, build_model

FORMATS = [("packed", "packed"), ("packed-base3", "packed-base3"), ("hf", "hf")]


def make_run(folder: Path, preset: str, gguf_ready: bool) -> Path:
    """A run folder holding one checkpoint of a fresh model (32k vocabulary)."""
    extra = {"norm_placement": "sublayer", "tie_embeddings": True} if gguf_ready else {}
    cfg = Config(model=ModelConfig(preset=preset, vocab_size=32000, **extra))
    cfg.model = cfg.model.resolved()
    torch.manual_seed(0)
    model = build_model(cfg.model)
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(to_toml(cfg))
    ByteTokenizer().save(folder / "tokenizer")
    save_checkpoint(folder, 0, model, {"step": 0}, to_toml(cfg))
    return folder


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--presets", default="125m,1b")
    args = p.parse_args()
    report = {"date": time.strftime("%Y-%m-%d"), "vocab_size": 32000, "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            run = make_run(Path(tmp) / preset, preset, gguf_ready=False)
            gguf_run = make_run(Path(tmp) / f"{preset}-gguf", preset, gguf_ready=True)
            jobs = [(run, f, None) for f, _ in FORMATS] + [(gguf_run, "gguf", t) for t in ("TQ2_0", "TQ1_0")]
            for source, fmt, gtype in jobs:
                name = fmt if gtype is None else f"gguf-{gtype}"
                target = Path(tmp) / f"{preset}-{name}" / ("model.gguf" if fmt == "gguf" else "")
                result = export_run(source, target, fmt, gtype or "TQ2_0")
                row = {
                    "preset": preset,
                    "format": name,
                    "bytes": result.bytes,
                    "bits_per_param": result.bits_per_param,
                    "summary": result.summary(),
                }
                report["results"].append(row)
                print(json.dumps(row), flush=True)
                Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
