"""Train the same config as 1.58-bit and as its bf16 nn.Linear twin, side by side, on one device.

Writes JSON with, per variant: median tokens/s over the logged intervals (the first two
dropped as warm-up), step time, peak GPU memory, final train and validation loss.

    PYTHONPATH=. python benchmarks/train_compare.py --config configs/gpu-125m.toml --out r.json \
        --variants ternary,none --compile both -- --data.path=DATA --train.steps=300
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from pathlib import Path

from benchmarks.common import header, run_one, write_json


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--variants", default="ternary,none", help="model.quant values")
    p.add_argument("--compile", choices=["eager", "compiled", "both"], default="eager")
    args, overrides = p.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    modes = {"eager": [False], "compiled": [True], "both": [False, True]}[args.compile]
    report = header(args.config) | {"overrides": overrides, "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        for compile_ in modes:
            for quant in args.variants.split(","):
                extra = [*overrides, f"--model.quant={quant}", f"--train.compile={str(compile_).lower()}"]
                row = {"quant": quant, "compiled": compile_}
                try:
                    row |= run_one(args.config, extra, Path(tmp) / f"{quant}-{compile_}")
                except Exception as e:  # keep the other variants' numbers
                    traceback.print_exc()
                    row["error"] = repr(e)
                report["results"].append(row)
                write_json(args.out, report)
                print(json.dumps(row), flush=True)
    for r in report["results"]:
        if "error" not in r:
            mode = "compiled" if r["compiled"] else "eager"
            print(
                f"{r['quant']:8s} {mode:8s} {r['tokens_per_sec']:10,.0f} tok/s  "
                f"{r['peak_memory_gb'] or 0:6.1f} GB  val loss {r['val_loss']:.4f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
