"""Ternary mixture of experts against dense and bf16 twins, and grouped expert GEMMs against the loop.

(a) quality at equal active parameters and equal tokens: the config's MoE (ternary), the dense
    model of the same active width (model.moe_experts = 0, moe_ffn_dim * top_k = ffn_dim), and the
    bf16 twins of both (model.quant = none), trained in turn on the same batches, then scored on
    held-out text as `bittern eval --text` does (bittern.eval.runs.evaluate_runs);
(b) speed: the training tokens/s of those runs, and one MoE layer's forward + backward with its
    experts as a per-expert loop vs grouped GEMMs (ternary and bf16 twin).

JSON out, rewritten after every part; --deadline (seconds) skips what would not finish in time.

    PYTHONPATH=. python benchmarks/moe.py --config configs/gpu-moe-125m.toml --out moe.json \
        --eval-text EVAL --deadline 500 -- --data.path=DATA --train.steps=150
    # the ternary experts' layer paths and the ternary vs bf16 MoE step (under 3 minutes on an H200):
    PYTHONPATH=. python benchmarks/moe.py --config configs/gpu-moe-125m.toml --out moe-speed.json \
        --eval-text EVAL --variants ternary_moe,bf16_moe --deadline 170 -- --data.path=DATA --train.steps=30
    # CPU smoke test:
    PYTHONPATH=. python benchmarks/moe.py --config configs/shakespeare-tiny-moe.toml --out /tmp/m.json \
        --eval-text README.md --deadline 300 -- --train.steps=4 --train.eval_every=0 --data.path=DATA
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from benchmarks.common import header, run_one, write_json
from bittern.config import load_config, parse_overrides
from bittern.eval.runs import evaluate_runs
from bittern.models import build_model
from bittern.models.moe import set_expert_path
from bittern.runtime import autocast, resolve_device, resolve_precision

VARIANTS = {
    "ternary_moe": [],
    "ternary_dense": ["--model.moe_experts=0"],
    "bf16_moe": ["--model.quant=none"],
    "bf16_dense": ["--model.quant=none", "--model.moe_experts=0"],
}


def layer_speed(config: str, overrides: list[str], tokens: int, repeats: int) -> list[dict]:
    """Forward + backward time of the first MoE layer, loop vs grouped experts, ternary and twin.

    Ternary experts also as "grouped-v1" (weights stacked and ternarized per call, one GEMM per
    projection): the grouped path before it kept stacked codes between optimizer steps.
    """
    rows = []
    for quant in ("ternary", "none"):
        cfg = load_config(config, parse_overrides([*overrides, f"--model.quant={quant}"]))
        device = resolve_device(cfg.train.device)
        cast = autocast(device, resolve_precision(cfg.train.precision, device))
        model_cfg = cfg.model.resolved(vocab_size=cfg.model.vocab_size or 256)
        moe = build_model(model_cfg).layers[model_cfg.moe_layer_indices()[0]].mlp.to(device)
        x = torch.randn(tokens, model_cfg.dim, device=device, requires_grad=True)
        for path in ("loop", "grouped-v1", "grouped") if quant == "ternary" else ("loop", "grouped"):
            set_expert_path(moe, path)
            seconds = []
            for i in range(repeats + 2):  # two warm-up calls
                sync(device)
                start = time.perf_counter()
                with cast:
                    y = moe(x)
                y.float().square().mean().backward()
                sync(device)
                if i >= 2:
                    seconds.append(time.perf_counter() - start)
            ms = 1e3 * sorted(seconds)[len(seconds) // 2]
            rows.append(
                {
                    "quant": quant,
                    "path": path,
                    "tokens": tokens,
                    "ms": ms,
                    "tokens_per_sec": tokens / ms * 1e3,
                }
            )
    for quant in ("ternary", "none"):
        loop, *grouped = (r for r in rows if r["quant"] == quant)
        for row in grouped:
            row["speedup_vs_loop"] = loop["ms"] / row["ms"]
    twin = next(r for r in rows if r["quant"] == "none" and r["path"] == "grouped")
    for row in rows:
        if row["quant"] == "ternary" and row["path"] != "loop":
            row["ms_vs_bf16_grouped"] = row["ms"] / twin["ms"]  # target: <= 1 / 0.9
    return rows


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ratios(results: dict) -> dict:
    """The issue's targets, from whatever finished."""
    out = {}
    ppl = {k: v["eval_perplexity"] for k, v in results.items() if "eval_perplexity" in v}
    tok = {k: v["tokens_per_sec"] for k, v in results.items() if "tokens_per_sec" in v}
    if {"ternary_moe", "ternary_dense"} <= ppl.keys():
        out["ternary_moe_vs_dense_ppl"] = ppl["ternary_moe"] / ppl["ternary_dense"]
    if {"bf16_moe", "bf16_dense"} <= ppl.keys():
        out["bf16_moe_vs_dense_ppl"] = ppl["bf16_moe"] / ppl["bf16_dense"]
    if {"ternary_moe", "bf16_moe"} <= tok.keys():
        out["ternary_moe_vs_bf16_moe_tokens_per_sec"] = tok["ternary_moe"] / tok["bf16_moe"]  # target >= 0.9
    if {"ternary_moe", "ternary_dense"} <= tok.keys():
        out["ternary_moe_vs_dense_step_time"] = tok["ternary_dense"] / tok["ternary_moe"]  # target <= 1.3
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/gpu-moe-125m.toml")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--eval-text", required=True, help="held-out raw text to score every run on")
    p.add_argument("--deadline", type=float, default=480.0, help="seconds for the whole benchmark")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--twin-lr", type=float, default=0.0, help="optim.lr of the bf16 runs (0: the config's)")
    p.add_argument("--layer-tokens", type=int, default=8192)
    p.add_argument("--layer-repeats", type=int, default=5)
    args, overrides = p.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    end = time.monotonic() + args.deadline
    report = header(args.config) | {"overrides": overrides, "layer": [], "runs": {}, "skipped": []}
    try:
        report["layer"] = layer_speed(args.config, overrides, args.layer_tokens, args.layer_repeats)
    except Exception as e:
        traceback.print_exc()
        report["layer_error"] = repr(e)
    write_json(args.out, report)
    print(json.dumps(report["layer"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        longest = 0.0
        for name in [v for v in args.variants.split(",") if v]:  # --variants "": the layer part only
            left = end - time.monotonic()
            if left < 1.3 * longest + 20:  # the next run and its evaluation would not finish
                report["skipped"].append(name)
                continue
            extra = [*overrides, *VARIANTS[name]]
            if args.twin_lr and "--model.quant=none" in extra:
                extra.append(f"--optim.lr={args.twin_lr}")
            row = {}
            start = time.monotonic()
            try:
                run = Path(tmp) / name
                row = run_one(args.config, extra, run)
                ev = evaluate_runs([str(run)], text_path=args.eval_text).rows[0]
                row |= {"eval_loss": ev["loss"], "eval_perplexity": ev["perplexity"]}
            except Exception as e:  # keep the other variants' numbers
                traceback.print_exc()
                row["error"] = repr(e)
            longest = max(longest, time.monotonic() - start)
            report["runs"][name] = row
            report["ratios"] = ratios(report["runs"])
            write_json(args.out, report)
            print(
                name,
                json.dumps({k: v for k, v in row.items() if k not in ("val_curve", "train_curve")}),
                flush=True,
            )
    print(json.dumps(report.get("ratios", {}), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
