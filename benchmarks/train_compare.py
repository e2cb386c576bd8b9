"""Train the same config as 1.58-bit and as its bf16 nn.Linear twin, side by side, on one device.

Writes JSON with, per variant: median tokens/s over the logged intervals (the first two
dropped as warm-up), step time, peak GPU memory, final train and validation loss.

    python benchmarks/train_compare.py --config configs/gpu-125m.toml --out results.json \
        --variants ternary,none --compile both -- --data.path=DATA --train.steps=300
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from bittern.config import load_config, parse_overrides
from bittern.monitor import read_metrics
from bittern.train import Trainer


def run_variant(config: str, overrides: list[str], quant: str, compile_: bool, workdir: Path) -> dict:
    extra = [*overrides, f"--model.quant={quant}", f"--train.compile={str(compile_).lower()}"]
    cfg = load_config(config, parse_overrides(extra))
    out = workdir / f"{quant}-{'compiled' if compile_ else 'eager'}"
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer = Trainer(cfg, out, progress=False)
    result = trainer.run()
    wall = time.perf_counter() - start
    records = read_metrics(out / "metrics.jsonl")
    speeds = [r["tokens_per_sec"] for r in records if "tokens_per_sec" in r][2:]
    tok_s = statistics.median(speeds) if speeds else float("nan")
    tokens_per_step = cfg.train.batch_size * cfg.train.seq_len
    return {
        "quant": quant,
        "compiled": compile_,
        "params": trainer.model.num_params(non_embedding=False),
        "tokens_per_sec": tok_s,
        "step_time_s": tokens_per_step / tok_s,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None,
        "final_train_loss": records[-1]["loss"],
        "val_loss": result.val_loss,
        "val_perplexity": result.val_perplexity,
        "steps": result.step,
        "wall_s": wall,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--variants", default="ternary,none")
    p.add_argument("--compile", choices=["eager", "compiled", "both"], default="eager")
    args, overrides = p.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    modes = {"eager": [False], "compiled": [True], "both": [False, True]}[args.compile]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for compile_ in modes:
            for quant in args.variants.split(","):
                try:
                    rows.append(run_variant(args.config, overrides, quant, compile_, Path(tmp)))
                except Exception as e:  # keep the other variants' numbers
                    traceback.print_exc()
                    rows.append({"quant": quant, "compiled": compile_, "error": repr(e)})
                print(json.dumps(rows[-1]), flush=True)
    report = {
        "device": device,
        "torch": torch.__version__,
        "config": args.config,
        "overrides": overrides,
        "date": time.strftime("%Y-%m-%d"),
        "results": rows,
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    for r in rows:
        if "error" not in r:
            print(
                f"{r['quant']:8s} {'compiled' if r['compiled'] else 'eager':8s} "
                f"{r['tokens_per_sec']:10,.0f} tok/s  {r['peak_memory_gb'] or 0:6.1f} GB  "
                f"val loss {r['val_loss']:.4f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
