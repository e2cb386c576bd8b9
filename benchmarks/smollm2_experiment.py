"""Issue 4's experiment: SmolLM2-135M converted to 1.58 bits and trained on one token budget
with (a) CE only, (b) CE + distillation, (c) (b) + progressive init, (d) (b) + hard-token
mining, (e) (b) + margin loss; held-out perplexity of each beside the teacher's. JSON out.

    PYTHONPATH=. python benchmarks/smollm2_experiment.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf \
        --data DATA --out r.json [--steps 200] [--parallel]

DATA is `bittern data prepare TEXT --tokenizer <converted run>/tokenizer`. With --parallel
each variant trains in its own process, all at once on the one GPU: a 135M model leaves the
GPU waiting on the host most of the time, so the variants share it nearly for free.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import bittern
from bittern.config import config_from_dict
from bittern.convert import convert_checkpoint
from bittern.data.loader import TokenDataset
from bittern.eval import evaluate
from bittern.runtime import autocast
from bittern.train import Trainer

COMMON = {"loss": {"distill": 0.5, "temperature": 1.0}}
VARIANTS = {
    "a_ce_only": {"init": {"strategy": "pretrained"}},
    "b_distill": {"init": {"strategy": "pretrained"}, **COMMON},
    "c_distill_progressive": {"init": {"strategy": "progressive", "progressive_steps": 60}, **COMMON},
    "d_distill_hard_tokens": {
        "init": {"strategy": "pretrained"},
        "loss": {**COMMON["loss"], "hard_token_ratio": 0.5},
    },
    "e_distill_margin": {"init": {"strategy": "pretrained"}, "loss": {**COMMON["loss"], "margin": 0.1}},
}


def student_config(data: str, steps: int, extra: dict) -> dict:
    cfg = {
        "model": {"quant": "ternary", "norm_placement": "none", "max_seq_len": 1024},
        "data": {"path": data},
        "train": {
            "steps": steps,
            "batch_size": 16,
            "micro_batch_size": 8,
            "seq_len": 1024,
            "eval_every": 0,
            "eval_batches": 10,  # x batch_size 16: the 160 windows the teacher is scored on
        },
        "optim": {"lr": 5e-4},
        "schedule": {"name": "two_stage"},
        "checkpoint": {"every": 0},
        "log": {"every": 10, "tensorboard": False},
    }
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gguf", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--only", default=",".join(VARIANTS))
    p.add_argument("--parallel", action="store_true", help="one process per variant, all at once")
    p.add_argument("--source", help=argparse.SUPPRESS)  # a converted run (the --parallel children)
    args = p.parse_args()
    if args.source:
        return train_variants(args, Path(args.source), {"results": {}}, Path(args.source).parent)
    device = torch.device("cuda")
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "steps": args.steps,
        "tokens_per_run": args.steps * 16 * 1024,
        "results": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        source = convert_checkpoint(Path(args.gguf), Path(tmp) / "source", quant="none")
        teacher, _ = bittern.load(source, device=device)
        data = TokenDataset(Path(args.data))
        ctx = autocast(device, "bf16")
        report["results"]["teacher"] = evaluate(teacher, data, 1024, 8, 20, device, ctx)
        print("teacher", json.dumps(report["results"]["teacher"]), flush=True)
        del teacher
        torch.cuda.empty_cache()
        if args.parallel:
            run_children(args, source, report, Path(tmp))
        else:
            train_variants(args, source, report, Path(tmp))
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


def run_children(args, source: Path, report: dict, tmp: Path) -> None:
    """Each variant in its own process at the same time; their JSON merged into `report`."""
    children = {}
    for name in args.only.split(","):
        out = tmp / f"{name}.json"
        cmd = [sys.executable, __file__, "--gguf", args.gguf, "--data", args.data, "--out", str(out)]
        cmd += ["--steps", str(args.steps), "--only", name, "--source", str(source)]
        children[name] = (subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}), out)
    for name, (proc, out) in children.items():
        code = proc.wait()
        row = json.loads(out.read_text())["results"][name] if out.exists() else {"error": f"exit {code}"}
        report["results"][name] = row
        Path(args.out).write_text(json.dumps(report, indent=1))


def train_variants(args, source: Path, report: dict, tmp: Path) -> int:
    """Train args.only one after another, each from `source`; rows into `report` and args.out."""
    for name in args.only.split(","):
        cfg = config_from_dict(student_config(args.data, args.steps, VARIANTS[name]))
        start = time.perf_counter()
        try:
            trainer = Trainer(cfg, Path(tmp) / name, progress=False, init=str(source))
            result = trainer.run()
            row = {
                "val_loss": result.val_loss,
                "val_perplexity": result.val_perplexity,
                "val_bits_per_byte": result.val_bits_per_byte,
                "wall_s": time.perf_counter() - start,
                "overrides": VARIANTS[name],
            }
            trainer.close()
        except Exception as e:  # keep the other variants
            row = {"error": repr(e)}
        report["results"][name] = row
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(name, json.dumps(row), flush=True)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
