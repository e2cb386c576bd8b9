"""Norm inside each BitLinear vs sub-layer norms (and tied embeddings) on the built-in job.

Trains each variant of one config with the same seed and tokens, scores every run on the whole
validation split with what `bittern eval` runs (evaluate_runs), and says which export formats
accept it. Writes JSON:

    PYTHONPATH=. python benchmarks/norm_placement.py --config configs/shakespeare-tiny.toml \
        --out benchmarks/results/issue14_norm_placement_cpu.json --batches 64 -- --train.steps=50
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import header, run_one, write_json
from bittern.config import load_config, parse_overrides
from bittern.errors import BitternError
from bittern.eval.runs import evaluate_runs
from bittern.export import gguf_export, hf

# name -> model overrides; "inside" is the built-in job before issue 14, the others what GGUF needs.
VARIANTS = {
    "inside": ["--model.norm_placement=inside", "--model.tie_embeddings=false"],
    "sublayer": ["--model.norm_placement=sublayer", "--model.tie_embeddings=false"],
    "sublayer-tied": ["--model.norm_placement=sublayer", "--model.tie_embeddings=true"],
}


def exports(config: str, overrides: list[str]) -> dict[str, str]:
    """Per format, "ok" or the refusal, from the model config alone (no training needed)."""
    model = load_config(config, parse_overrides(overrides)).model.resolved(vocab_size=257)
    out = {}
    for name, module in (("hf", hf), ("gguf", gguf_export)):
        try:
            module.check_exportable(model)
            out[name] = "ok"
        except BitternError as e:
            out[name] = str(e)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/shakespeare-tiny.toml")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
    p.add_argument(
        "--batches", type=int, default=0, help="score at most this many batches (0: the whole split)"
    )
    p.add_argument("--runs", help="new folder to keep the runs in (default: a temporary one)")
    args, overrides = p.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    names = args.variants.split(",")
    report = header(args.config) | {"overrides": overrides, "threads": torch.get_num_threads(), "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        if args.runs:
            Path(args.runs).mkdir(parents=True)
        tmp = args.runs or tmp
        runs = []
        for name in names:
            extra = [*overrides, *VARIANTS[name]]
            row = {"variant": name, **run_one(args.config, extra, Path(tmp) / name)}
            row["exports"] = exports(args.config, extra)
            report["results"].append(row)
            runs.append(str(Path(tmp) / name))
            write_json(args.out, report)
            print(json.dumps({k: row[k] for k in ("variant", "val_perplexity", "wall_s")}), flush=True)
        scored = evaluate_runs(runs, max_batches=args.batches)
    report["scored_on"] = scored.source
    report["unigram_baseline_perplexity"] = scored.baseline["perplexity"]
    for row, ev in zip(report["results"], scored.rows, strict=True):
        row["eval"] = {k: ev[k] for k in ("loss", "perplexity", "bits_per_byte", "tokens")}
    write_json(args.out, report)
    for r in report["results"]:
        formats = ",".join(f for f, v in r["exports"].items() if v == "ok") or "none"
        print(
            f"{r['variant']:14s} eval perplexity {r['eval']['perplexity']:.3f}  "
            f"{r['tokens_per_sec']:8,.0f} tok/s  {r['wall_s']:6.1f} s  exports: {formats}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
