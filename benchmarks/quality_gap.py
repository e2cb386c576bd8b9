"""Held-out quality of ternary recipes against the bf16 twin trained on the same batches (issue 15).

Every recipe trains the same config on the same data with the same seed (so the same batches in
the same order), then is scored as `bittern eval RUN --text TEXT` scores it: perplexity and bits
per byte on a raw held-out text of another source (`benchmarks/eval_text.sh`). The JSON has, per
run, those scores, its ratio to the twin's perplexity, the training tokens, wall time and GPU-hours;
a distillation run's GPU-hours include its teacher's training.

    PYTHONPATH=. python benchmarks/quality_gap.py --config configs/quality-small.toml \
        --data DATA --text EVAL.txt --out r.json --recipes twin,ternary,late75 -- --train.steps=400

Recipes are named in RECIPES below; `twin` runs first when asked for, as the reference, with the
teachers of the distillation recipes (added when not asked for). `--deadline` skips recipes
that would not finish in time.
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

from benchmarks.common import header, run_one, write_json
from bittern.eval.runs import evaluate_runs
from bittern.monitor import read_metrics

TWIN_LR = ["--optim.lr=1e-3", "--schedule.name=cosine"]


def late(start_frac: float, ramp_frac: float, steps: int) -> list[str]:
    """Full precision for `start_frac` of training, then lambda 0 -> 1 linearly over `ramp_frac`."""
    ramp = max(1, round(ramp_frac * steps))
    return [
        "--progressive.schedule=stepped",
        f"--progressive.start_frac={start_frac}",
        "--progressive.interval=1",
        f"--progressive.delta={1.0 / ramp:.6g}",
    ]


def recipes(steps: int) -> dict[str, dict]:
    """name -> {"args": overrides, "teacher": recipe whose run teaches it (or None)}."""
    r = {
        "twin": [*TWIN_LR, "--model.quant=none"],
        "twin_lr2x": ["--optim.lr=2e-3", "--schedule.name=cosine", "--model.quant=none"],
        "ternary": ["--optim.lr=3e-3", "--schedule.name=two_stage"],
        "ternary_inside": ["--optim.lr=3e-3", "--schedule.name=two_stage", "--model.norm_placement=inside"],
        "late50": [*TWIN_LR, *late(0.5, 0.05, steps)],
        "late75": [*TWIN_LR, *late(0.75, 0.05, steps)],
        "late90": [*TWIN_LR, *late(0.9, 0.02, steps)],
        "late75_slow": [*TWIN_LR, *late(0.75, 0.15, steps)],
        "late75_lr3e-3": ["--optim.lr=3e-3", "--schedule.name=cosine", *late(0.75, 0.05, steps)],
        "late75_wd0": [*TWIN_LR, *late(0.75, 0.05, steps), "--optim.weight_decay=0"],
        "late75_channel": [*TWIN_LR, *late(0.75, 0.05, steps), "--model.weight_granularity=channel"],
    }
    r["late75_lr2e-3"] = ["--optim.lr=2e-3", "--schedule.name=cosine", *late(0.75, 0.05, steps)]
    out = {name: {"args": args, "teacher": None} for name, args in r.items()}
    out["late75_distill"] = {"args": [*r["late75"], "--loss.distill=0.5"], "teacher": "twin"}
    out["late75_lr2e-3_distill"] = {
        "args": [*r["late75_lr2e-3"], "--loss.distill=0.5"],
        "teacher": "twin_lr2x",
    }
    out["ternary_distill"] = {"args": [*r["ternary"], "--loss.distill=0.5"], "teacher": "twin"}
    return out


def phase_speeds(run: Path) -> dict:
    """Median tokens/s of the logged intervals at lambda 0 and at lambda 1 (the first two dropped)."""
    records = [r for r in read_metrics(run / "metrics.jsonl") if "tokens_per_sec" in r][2:]
    out = {}
    for name, lam in (("tokens_per_sec_lambda0", 0.0), ("tokens_per_sec_lambda1", 1.0)):
        speeds = [r["tokens_per_sec"] for r in records if r.get("quant_lambda") == lam]
        if speeds:
            out[name] = statistics.median(speeds)
    return out


def score(run: Path, text: str) -> dict:
    """What `bittern eval RUN --text TEXT` prints for this run, and the unigram baseline."""
    result = evaluate_runs([str(run)], text_path=text)
    row, base = result.rows[0], result.baseline
    return {
        "eval_loss": row["loss"],
        "eval_perplexity": row["perplexity"],
        "eval_bits_per_byte": row["bits_per_byte"],
        "eval_tokens": row["tokens"],
        "unigram_perplexity": base["perplexity"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--data", required=True, help="prepared dataset folder (bittern data prepare)")
    p.add_argument("--text", required=True, help="held-out raw text, scored like bittern eval --text")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--recipes", default="twin,ternary,late75", help="comma-separated names of RECIPES")
    p.add_argument("--steps", type=int, required=True, help="train.steps of every run")
    p.add_argument("--deadline", type=float, default=0.0, help="seconds; skip recipes past it (0: none)")
    p.add_argument("--keep", default="", help="folder to keep the runs in (default: a temporary one)")
    args, overrides = p.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    table = recipes(args.steps)
    names = args.recipes.split(",")
    unknown = [n for n in names if n not in table]
    if unknown:
        p.error(f"unknown recipes {unknown}; known: {sorted(table)}")
    teachers = [t for t in dict.fromkeys(table[n]["teacher"] for n in names) if t and t not in names]
    names = teachers + names
    names.sort(key=lambda n: n not in ("twin", *teachers))  # twins first: the reference and the teachers
    base = [f"--data.path={args.data}", f"--train.steps={args.steps}", *overrides]
    report = header(args.config) | {"data": args.data, "text": args.text, "overrides": base, "runs": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        for name in names:
            spent = time.perf_counter() - start
            done = [r["wall_s"] for r in report["runs"].values() if "wall_s" in r]
            if args.deadline and done and spent + max(done) > args.deadline:
                report["runs"][name] = {"skipped": f"deadline ({spent:.0f} s spent)"}
                continue
            recipe, row = table[name], {"args": table[name]["args"]}
            extra = list(recipe["args"])
            teacher = report["runs"].get(recipe["teacher"]) if recipe["teacher"] else None
            if recipe["teacher"]:
                if not teacher or "wall_s" not in teacher:
                    report["runs"][name] = {"skipped": f"teacher {recipe['teacher']} did not train"}
                    continue
                extra.append(f"--loss.teacher={root / recipe['teacher']}")
            try:
                row |= run_one(args.config, [*base, *extra], root / name)
                row |= phase_speeds(root / name) | score(root / name, args.text)
                row["gpu_hours"] = row["wall_s"] / 3600 if torch.cuda.is_available() else 0.0
                if teacher:
                    row["gpu_hours_with_teacher"] = row["gpu_hours"] + teacher["gpu_hours"]
            except Exception as e:  # keep the other recipes' numbers
                traceback.print_exc()
                row["error"] = repr(e)
            report["runs"][name] = row
            twin = report["runs"].get("twin", {}).get("eval_perplexity")
            for r in report["runs"].values():
                if twin and "eval_perplexity" in r:
                    r["ratio_to_twin"] = r["eval_perplexity"] / twin
            write_json(args.out, report)
            print(
                json.dumps(
                    {"recipe": name} | {k: v for k, v in row.items() if k not in ("val_curve", "train_curve")}
                ),
                flush=True,
            )
    print(f"\n{'recipe':18s} {'ppl':>8s} {'ratio':>6s} {'bpb':>6s} {'tokens':>11s} {'wall s':>7s}")
    for name, r in report["runs"].items():
        if "eval_perplexity" in r:
            print(
                f"{name:18s} {r['eval_perplexity']:8.2f} {r.get('ratio_to_twin', float('nan')):6.3f} "
                f"{r['eval_bits_per_byte']:6.3f} {r['tokens']:11,d} {r['wall_s']:7.1f}"
            )
        else:
            print(f"{name:18s} {r.get('skipped') or r.get('error')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
