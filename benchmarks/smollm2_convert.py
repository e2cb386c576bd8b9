"""SmolLM2-135M converted to 1.58 bits with issue 15's recipe, trained for a wall-clock budget, scored
against its full-precision teacher on held-out text (issue 15, item 5). JSON out.

    PYTHONPATH=. python benchmarks/smollm2_convert.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf \
        --source-data /tmp/data/ds24m --text eval.txt --out r.json --deadline 330

Steps, each timed in the JSON:
1. the GGUF -> a bittern run at full precision (`convert_checkpoint(..., quant="none")`): the
   `--init` source of the student and its frozen bf16 teacher;
2. `--source-data` (a dataset in another tokenizer) decoded and prepared again with SmolLM2's
   tokenizer (benchmarks/retokenize.py), or `--data`, a dataset already in it;
3. the teacher scored as `bittern eval RUN --text TEXT` scores it (every token of the text once,
   windows of --seq-len) and on the whole validation split of the data (in domain, held out);
4. a short calibration run of the student's own config (--calib-steps: half of them blending,
   half at lambda 1) measures the step time of both phases and the fixed cost of a run (setup,
   compilation, final save and validation); the real run's step count is what fits in what is
   left of --deadline, less the time the teacher's scoring took (the student's is the same work);
5. the student: the teacher's weights, ternary, `model.norm_placement = "none"` (lambda 0 is the
   teacher exactly), lambda 0 -> 1 linearly over the first --ramp-frac of the steps (LR warmup
   over the same steps, then cosine to 10%), optimizer state kept throughout, logit distillation
   from the teacher (weight --distill, T 1), bf16 autocast, blocks compiled one by one;
6. the student scored like the teacher; ratios of its perplexities to the teacher's.

`--steps N` skips the calibration. GPU-hours are the whole script's wall time on one GPU.

Why the ramp is a quarter of the steps, not issue 15's 5%: ternarizing SmolLM2's trained weights
at once wrecks it. Held-out loss before any training (4 windows of 256 tokens, CPU): 3.09 at
lambda 0, 3.42 at 0.25, 7.40 at 0.5, 17.0 at 0.75 and at 1 (uniform: 10.8; per-channel scales:
15.8 at 1). Issue 4 measured 54 perplexity with a 60-of-200-step ramp against 162 quantized at
once. Issue 15's 5% was for a 50m model trained from scratch for a few hundred steps first.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from benchmarks.retokenize import retokenize
from bittern.checkpoint.load import load_model_and_tokenizer
from bittern.config import Config, config_from_dict
from bittern.convert import convert_checkpoint
from bittern.data.loader import TokenDataset
from bittern.errors import TrainingStopped
from bittern.eval.perplexity import evaluate, evaluate_text
from bittern.eval.runs import prefix_id, read_text
from bittern.monitor import read_metrics
from bittern.runtime import autocast, resolve_device, resolve_precision
from bittern.train import Trainer

QUIET = 10**9  # log.health_every / histogram_every: the ternary health hooks off


def student_config(data: str, steps: int, ramp: int, args: argparse.Namespace) -> Config:
    """The recipe: pretrained init, lambda 0 -> 1 over `ramp` steps, cosine LR, distillation."""
    cfg = {
        "model": {"quant": "ternary", "norm_placement": "none"},
        "data": {"path": data},
        "train": {
            "steps": steps,
            "batch_size": args.batch_size,
            "micro_batch_size": args.micro_batch_size,
            "seq_len": args.seq_len,
            "eval_every": 0,
            "eval_batches": 1,  # the run's own final validation; the scores come from score()
            "compile": args.compile,
            "device": args.device,
        },
        "optim": {"lr": args.lr, "weight_decay": args.weight_decay},
        "schedule": {"name": "cosine", "warmup_steps": ramp, "min_lr_ratio": 0.1},
        "init": {"strategy": "pretrained"},
        # stepped from step 0: lambda = (1 + step) / ramp, 1 from step ramp - 1 on (never exactly 0,
        # so no graph is compiled for one full-precision step)
        "progressive": {"schedule": "stepped", "start_frac": 0.0, "interval": 1, "delta": 1.0 / ramp},
        "loss": {"distill": args.distill, "temperature": 1.0},
        "checkpoint": {"every": 0, "keep_last": 1},
        "log": {"every": 10, "tensorboard": False, "health_every": QUIET, "histogram_every": QUIET},
    }
    return config_from_dict(cfg)


def ramp_steps(steps: int, frac: float) -> int:
    return max(1, min(steps, round(frac * steps)))


def train(cfg: Config, out: Path, source: Path, stop_after: float | None = None) -> dict:
    """One student run into `out`: its wall time, steps done and logged records. With `stop_after`
    (seconds) the run gets SIGTERM then, if still going: it finishes the step, saves and stops."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer = Trainer(cfg, out, progress=False, init=str(source))
    done = threading.Event()
    if stop_after is not None:  # the Trainer's own preemption path (bittern.train.signals)
        wait = max(0.0, stop_after - (time.perf_counter() - start))
        threading.Thread(target=_terminate, args=(wait, done), daemon=True).start()
    stopped = None
    try:
        result = trainer.run()
        val_loss = result.val_loss
    except TrainingStopped as e:
        stopped, val_loss = str(e), None
    finally:
        done.set()
    steps = trainer.step
    trainer.close()
    wall = time.perf_counter() - start
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    records = [r for r in read_metrics(out / "metrics.jsonl") if "tokens_per_sec" in r]
    return {
        "wall_s": wall,
        "steps_done": steps,
        "stopped": stopped,
        "final_val_loss": val_loss,
        "records": records,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None,
    }


def _terminate(wait: float, done: threading.Event) -> None:
    """SIGTERM to this process after `wait` seconds, then every second until `done` (a signal that
    comes before the Trainer's loop has started is not seen by it)."""
    if done.wait(wait):
        return
    while not done.is_set():
        os.kill(os.getpid(), signal.SIGTERM)
        done.wait(1.0)


def step_times(records: list[dict], tokens_per_step: int, drop: int = 2) -> dict:
    """Median seconds per step while blending (0 < lambda < 1) and at lambda 1, the first `drop`
    logged steps of each phase left out (they compile)."""
    out = {}
    for name, keep in (("blend", lambda lam: 0 < lam < 1), ("quantized", lambda lam: lam == 1)):
        speeds = [r["tokens_per_sec"] for r in records if keep(r.get("quant_lambda", 1.0))]
        speeds = speeds[drop:] or speeds
        if speeds:
            out[name] = tokens_per_step / statistics.median(speeds)
    return out


def plan_steps(budget_s: float, overhead_s: float, blend_s: float, step_s: float, ramp_frac: float) -> int:
    """The most steps N with overhead + ramp_frac N blend_s + (1 - ramp_frac) N step_s <= budget."""
    per_step = ramp_frac * blend_s + (1 - ramp_frac) * step_s
    return max(1, int((budget_s - overhead_s) / per_step))


def score(run: Path, data: TokenDataset, text: str, seq_len: int, batch: int, windows: int, device) -> dict:
    """What `bittern eval RUN --text TEXT` computes (every token of the text once, windows of
    `seq_len`), and the same on the first `windows` validation windows of `data` (0: all)."""
    model, tokenizer = load_model_and_tokenizer(run, device=device)
    amp = autocast(device, resolve_precision("auto", device))
    data.check_tokenizer(tokenizer.identity())
    body = read_text(Path(text))
    ids = tokenizer.encode(body)
    out = {"text": evaluate_text(model, ids, len(body.encode()), seq_len, prefix_id(tokenizer), batch, amp)}
    max_batches = -(-windows // batch) if windows else None
    out["val"] = evaluate(model, data, seq_len, batch, max_batches, device, amp)
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gguf", required=True, help="SmolLM2-135M-Instruct.Q4_1.gguf (or any source)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--source-data", help="a prepared dataset in another tokenizer, retokenized here")
    src.add_argument("--data", help="a prepared dataset already in the source's tokenizer")
    p.add_argument("--text", required=True, help="held-out raw text, scored like bittern eval --text")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--deadline", type=float, default=330.0, help="seconds for the whole script")
    p.add_argument("--steps", type=int, default=0, help="train steps (0: as many as fit the deadline)")
    p.add_argument("--max-steps", type=int, default=0, help="cap on the planned steps (0: none)")
    p.add_argument("--calib-steps", type=int, default=12)
    p.add_argument("--margin", type=float, default=10.0, help="seconds of the deadline kept spare")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--distill", type=float, default=0.5, help="loss.distill weight (0: CE only)")
    p.add_argument("--ramp-frac", type=float, default=0.25, help="lambda 0 -> 1 over this share of steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--micro-batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--device", default="auto")
    p.add_argument("--eval-batch", type=int, default=16, help="windows per forward when scoring")
    p.add_argument("--val-windows", type=int, default=512, help="validation windows scored (0: all)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=torch.cuda.is_available())
    p.add_argument("--work", default="", help="folder for the runs and data (default: a temporary one)")
    args = p.parse_args()
    start = time.perf_counter()
    signal.signal(signal.SIGTERM, lambda *_: None)  # a late stop signal (after the run) must not kill
    dynamo = torch._dynamo.config  # two compiled runs in one process: keep both runs' graphs
    dynamo.recompile_limit = max(getattr(dynamo, "recompile_limit", 8), 64)
    cuda = torch.cuda.is_available()
    report = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "gguf": args.gguf,
        "text": args.text,
        "args": vars(args),
        "phases_s": {},
    }

    def phase(name: str, t0: float) -> None:
        report["phases_s"][name] = time.perf_counter() - t0
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"[{time.perf_counter() - start:6.1f} s] {name}: {report['phases_s'][name]:.1f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        t0 = time.perf_counter()
        source = convert_checkpoint(Path(args.gguf), work / "source", quant="none", overwrite=True)
        phase("convert", t0)

        t0 = time.perf_counter()
        if args.source_data:
            data = retokenize(Path(args.source_data), work / "text", str(source / "tokenizer"), work / "data")
        else:
            data = Path(args.data)
        ds = TokenDataset(data)
        report["data"] = {
            "path": str(data),
            "train_tokens": ds.num_tokens("train"),
            "val_tokens": ds.num_tokens("val"),
            "vocab_size": ds.vocab_size,
        }
        phase("data", t0)

        t0 = time.perf_counter()
        device = resolve_device(args.device)
        scoring = (ds, args.text, args.seq_len, args.eval_batch, args.val_windows, device)
        report["teacher"] = score(source, *scoring)
        print("teacher", json.dumps(report["teacher"]), flush=True)
        phase("score_teacher", t0)
        scoring_s = report["phases_s"]["score_teacher"]

        tokens_per_step = args.batch_size * args.seq_len
        steps = args.steps
        if not steps:
            t0 = time.perf_counter()
            k = max(4, args.calib_steps)  # steps 0 .. k/2 - 2 blend, the rest at lambda 1
            cfg = student_config(str(data), k, k // 2, args)
            cfg.log.every = 1
            calib = train(cfg, work / "calib", source)
            times = step_times(calib.pop("records"), tokens_per_step)
            blend = times.get("blend", times.get("quantized"))
            quantized = times.get("quantized", blend)
            blending = k // 2 - 1
            overhead = max(0.0, calib["wall_s"] - blending * blend - (k - blending) * quantized)
            left = args.deadline - (time.perf_counter() - start) - 1.2 * scoring_s - args.margin
            steps = plan_steps(left, overhead, blend, quantized, args.ramp_frac)
            if args.max_steps:
                steps = min(steps, args.max_steps)
            report["calibration"] = calib | {
                "blend_step_s": blend,
                "quantized_step_s": quantized,
                "overhead_s": overhead,
                "budget_s": left,
                "planned_steps": steps,
            }
            phase("calibrate", t0)

        t0 = time.perf_counter()
        ramp = ramp_steps(steps, args.ramp_frac)
        cfg = student_config(str(data), steps, ramp, args)
        hard_stop = args.deadline - (time.perf_counter() - start) - 1.2 * scoring_s - args.margin / 2
        run = train(cfg, work / "student", source, stop_after=hard_stop)
        records = run.pop("records")
        report["student_train"] = run | {
            "steps": steps,
            "ramp_steps": ramp,
            "tokens": run["steps_done"] * tokens_per_step,
            "tokens_per_sec": statistics.median([r["tokens_per_sec"] for r in records[1:]] or [float("nan")]),
            "loss_curve": {r["step"]: r["loss"] for r in records},
            "lambda_curve": {r["step"]: r.get("quant_lambda") for r in records},
        }
        phase("train", t0)

        t0 = time.perf_counter()
        report["student"] = score(work / "student", *scoring)
        phase("score_student", t0)

    t, s = report["teacher"], report["student"]
    report["ratio"] = {k: s[k]["perplexity"] / t[k]["perplexity"] for k in ("text", "val")}
    report["wall_s"] = time.perf_counter() - start
    report["gpu_hours"] = report["wall_s"] / 3600 if cuda else 0.0
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"\n{'':10s} {'text ppl':>9s} {'bpb':>6s} {'val ppl':>8s} {'bpb':>6s}")
    for name, r in (("teacher", t), ("student", s)):
        print(
            f"{name:10s} {r['text']['perplexity']:9.2f} {r['text']['bits_per_byte']:6.3f} "
            f"{r['val']['perplexity']:8.2f} {r['val']['bits_per_byte']:6.3f}"
        )
    ratio = report["ratio"]
    print(f"ratio      {ratio['text']:9.3f} {'':6s} {ratio['val']:8.3f}")
    print(f"{report['student_train']['tokens']:,} tokens, {report['wall_s']:.0f} s in all", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
