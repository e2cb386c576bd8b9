"""Recipe ablation (issue 3): the same model and tokens under each recipe choice, plus the
full-precision twin with its own usual recipe. Writes JSON after every variant.

    PYTHONPATH=. python benchmarks/recipe_ablation.py --config configs/ablation-125m.toml \
        --out ablation.json [--only default,constant] -- --data.path=DATA
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from pathlib import Path

from benchmarks.common import header, run_one, write_json

# Each variant changes one thing against "default" (the config as written: ternary, cosine,
# global-norm clipping, no alpha, no progressive quantization).
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "constant": ["--schedule.name=constant"],
    "two_stage": ["--schedule.name=two_stage"],
    "adaptive_clip": ["--clip.mode=adaptive"],
    "alpha": ["--loss_scale.alpha=true"],
    "progressive": [
        "--progressive.schedule=stepped",
        "--progressive.start_frac=0.1",
        "--progressive.interval=20",
        "--progressive.delta=0.1",
    ],
    "fp_twin": ["--model.quant=none", "--optim.lr=6e-4"],
    "lr_3e-3": ["--optim.lr=3e-3"],
    "lr_7.5e-4": ["--optim.lr=7.5e-4"],
    "constant_lr_7.5e-4": ["--schedule.name=constant", "--optim.lr=7.5e-4"],
    "two_stage_lr_7.5e-4": ["--schedule.name=two_stage", "--optim.lr=7.5e-4"],
    "fp_twin_lr_1.5e-3": ["--model.quant=none", "--optim.lr=1.5e-3"],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variant names")
    args, overrides = p.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    report = header(args.config) | {"overrides": overrides, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            try:
                row = run_one(args.config, [*overrides, *VARIANTS[name]], Path(tmp) / name)
            except Exception as e:
                traceback.print_exc()
                row = {"error": repr(e)}
            report["results"][name] = row
            write_json(args.out, report)
            print(name, json.dumps(row), flush=True)
    for name, r in report["results"].items():
        if "error" not in r:
            print(
                f"{name:14s} val loss {r['val_loss']:.4f}  ppl {r['val_perplexity']:8.2f}  "
                f"{r['tokens_per_sec']:10,.0f} tok/s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
