"""Sweep of the packed ternary decode kernels (`bittern.kernels.ternary_gemv`) at the 1B shapes.

For each 1B linear shape (q/o 2048->2048, k/v 2048->256, gate/up 2048->5632, down 5632->2048) and
the fused groups the decoder runs (q/k/v 2048->2048+256+256 with three inside norms, gate/up
2048->2x5632 with two), for M = 1 and 8 tokens (and --prefill M = 128), this times every kernel
variant ("fused", "gemv" and their "-int" forms without dp4a, "dot") at its default tiles
(`gemv_config` / `dot_config`) and over a grid of tiles, plus cuBLAS bf16 `F.linear` on the same
shape as the baseline. Each is timed the way decode runs it: a CUDA graph of calls, each over a
different copy of the weights (together > the L2), replayed; the time per call and the achieved
bandwidth of the packed weights (words bytes / time) are reported. Every variant's output is
checked against `ternary_linear_reference` (bitwise without the inside norm; with it, the share
of outputs that differ, from the float32 statistics' rounding, must stay tiny; the tile grid's
configs are checked with the norm only).

The summary gives, per (shape, M), the best variant and tiles, and an estimate of the GEMV time
per 1B token (22 layers: q/k/v + o + gate/up + down, grouped, and the 7 layers ungrouped) for the
default choice and for the best. JSON to --out, rewritten after each shape; no new
measurement starts after --budget seconds (default 100), so it ends in under two minutes.

    PYTHONPATH=. python benchmarks/gemv_sweep.py --out gemv_sweep.json [--full] [--prefill]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DIM, KV, FFN, LAYERS = 2048, 256, 5632, 22  # the 1b preset (bittern/models/config.py)
SHAPES = {  # name: (K, member output sizes)
    "q_o": (DIM, (DIM,)),
    "k_v": (DIM, (KV,)),
    "gate_up": (DIM, (FFN,)),
    "down": (FFN, (DIM,)),
    "qkv_group": (DIM, (DIM, KV, KV)),
    "gate_up_group": (DIM, (FFN, FFN)),
}
PER_TOKEN = {  # how many of each a 1B token runs, grouped and not
    "grouped": {"qkv_group": 1, "q_o": 1, "gate_up_group": 1, "down": 1},
    "ungrouped": {"q_o": 2, "k_v": 2, "gate_up": 2, "down": 1},
}
L2_BYTES = 60 << 20
ROTATE_BYTES = 2 * L2_BYTES  # each call of a graph reads other weights: nothing left in L2
GEMV_GRID = {"block_n": (8, 16, 32, 64), "block_kw": (64, 128), "warps": (4,)}  # ~1 s of compile each
GEMV_GRID_FULL = {"block_n": (4, 8, 16, 32, 64), "block_kw": (32, 64, 128, 256), "warps": (2, 4, 8)}
DOT_GRID = ((16, 16, 8, 4, 2), (16, 32, 4, 4, 3), (16, 32, 8, 4, 2), (16, 64, 4, 4, 2), (16, 64, 8, 4, 2))
DOT_GRID_PREFILL = ((64, 64, 4, 4, 3), (64, 128, 2, 4, 3), (64, 128, 4, 8, 3), (128, 64, 2, 4, 3))
FLIP_LIMIT = 1e-3


def graph_time_us(fn, calls: int, replays: int = 7) -> float:
    """Median time per call of `fn(i)` for i < calls, captured in one CUDA graph and replayed."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(min(calls, 2)):  # compile and warm up outside the capture
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    del graph
    return sorted(times)[len(times) // 2]


class Case:
    """One shape's weights: `copies` packed copies (words, scale), norms, x, and the reference."""

    def __init__(self, name: str, k: int, sizes: tuple[int, ...], m: int, g: torch.Generator) -> None:
        from bittern.kernels.ternary_gemv import pack_words, ternary_linear_group_reference

        self.name, self.k, self.sizes, self.m = name, k, sizes, m
        self.n = sum(sizes)
        self.starts = [sum(sizes[:i]) for i in range(1, len(sizes))]
        codes = torch.randint(-1, 2, (self.n, k), device="cuda", generator=g, dtype=torch.int8)
        words = pack_words(codes)
        self.word_bytes = words.numel() * 4
        self.copies = max(2, min(64, -(-ROTATE_BYTES // self.word_bytes)))
        self.words = [words] + [words.clone() for _ in range(self.copies - 1)]
        self.scale = torch.rand(self.n, device="cuda", generator=g) * 0.02 + 0.01
        nw = (torch.rand(len(sizes), k, device="cuda", generator=g) + 0.5).bfloat16()
        self.norm = nw[0] if len(sizes) == 1 else nw  # one per member, as a trained model has
        self.x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
        self.ref = ternary_linear_group_reference(self.x, words, self.scale, None, None, 1e-5, self.starts)
        self.ref_norm = ternary_linear_group_reference(
            self.x, words, self.scale, self.norm, None, 1e-5, self.starts
        )
        self.bf16 = None

    def call(self, variant: str, config=None, norm: bool = True, i: int = 0) -> torch.Tensor:
        from bittern.kernels import ternary_gemv as tg

        nw = self.norm if norm else None
        args = (self.x, self.words[i % self.copies], self.scale, nw, None, 1e-5, self.starts)
        if config is None:
            return tg.ternary_linear_op(*args, variant)
        if variant == "dot":
            return tg.dot(*args, config=config)
        return tg.gemv(*args, variant.startswith("fused"), not variant.endswith("-int"), config=config)

    def check(self, variant: str, config=None) -> dict:
        """Against the reference with the inside norm; the defaults also without it, bitwise (a
        grid's tiles only with it: each norm setting is one more compile)."""
        out = {
            "share_differing_with_norm": (self.call(variant, config) != self.ref_norm).float().mean().item()
        }
        out["ok"] = out["share_differing_with_norm"] < FLIP_LIMIT
        if config is None:
            out["exact_without_norm"] = torch.equal(self.call(variant, None, norm=False), self.ref)
            out["ok"] &= out["exact_without_norm"]
        return out

    def time(self, variant: str, config=None) -> float:
        return graph_time_us(lambda i: self.call(variant, config, True, i), self.copies)

    def time_bf16(self) -> float:
        w = torch.randn(self.n, self.k, device="cuda", dtype=torch.bfloat16) * 0.02
        copies = max(2, min(32, -(-ROTATE_BYTES // (w.numel() * 2))))
        ws = [w] + [w.clone() for _ in range(copies - 1)]
        return graph_time_us(lambda i: F.linear(self.x, ws[i % copies]), copies)


def configs(variant: str, n: int, k: int, m: int, full: bool, prefill: bool):
    """None (the defaults) first, then the grid for this variant."""
    from bittern.kernels import ternary_gemv as tg

    yield None
    if variant in ("fused", "gemv") and m <= 16:
        grid = GEMV_GRID_FULL if full else GEMV_GRID
        yield from itertools.product(grid["block_n"], grid["block_kw"], grid["warps"])
        if not full:  # the default tiles with the other warp count
            bn, bkw, w = tg.gemv_config(n, k, m)
            yield (bn, bkw, 8 if w == 4 else 4)
    elif variant == "dot":
        yield from DOT_GRID_PREFILL if prefill else DOT_GRID


def sweep_case(case: Case, variants, full: bool, deadline: float) -> dict:
    from bittern.kernels import ternary_gemv as tg

    prefill = case.m > 16
    out = {
        "shape": case.name,
        "K": case.k,
        "N": list(case.sizes),
        "M": case.m,
        "packed_bytes": case.word_bytes,
        "copies_per_graph": case.copies,
        "auto_variant": tg.pick_variant(case.m),
        "rows": [],
    }
    try:
        out["bf16_us"] = case.time_bf16()
    except Exception as e:
        out["bf16_error"] = f"{type(e).__name__}: {e}"[:500]
    for variant in variants:
        if variant.startswith(("fused", "gemv")) and prefill:
            continue  # one program per token: not a prefill kernel
        for cfg in configs(variant, case.n, case.k, case.m, full, prefill):
            if time.perf_counter() > deadline:
                out["cut_by_budget"] = True
                return out
            if cfg is not None and variant.endswith("-int"):
                continue
            row = {"variant": variant, "config": "default" if cfg is None else list(cfg)}
            if cfg is None:
                row["resolved_config"] = list(
                    tg.dot_config(case.n, case.k, case.m)
                    if variant == "dot"
                    else tg.gemv_config(case.n, case.k, case.m)
                )
            try:
                row |= case.check(variant, cfg)
                row["us"] = case.time(variant, cfg)
                row["packed_GBps"] = case.word_bytes / row["us"] / 1e3
                if "bf16_us" in out:
                    row["speedup_over_bf16"] = out["bf16_us"] / row["us"]
            except Exception as e:  # a config that fails to compile or run is recorded, not fatal
                row["error"] = f"{type(e).__name__}: {e}"[:500]
                row["ok"] = False
            out["rows"].append(row)
    good = [r for r in out["rows"] if r.get("ok") and "us" in r]
    if good:
        best = min(good, key=lambda r: r["us"])
        default = [r for r in good if r["config"] == "default" and r["variant"] == out["auto_variant"]]
        out["best"] = {k: best[k] for k in ("variant", "config", "us", "packed_GBps")}
        out["default_us"] = default[0]["us"] if default else None
    return out


def per_token(results: list[dict], m: int) -> dict:
    """GEMV microseconds per 1B token (22 layers), grouped and ungrouped, default and best."""
    by = {r["shape"]: r for r in results if r["M"] == m}
    est = {}
    for layout, counts in PER_TOKEN.items():
        for which in ("default_us", "best"):
            try:
                per_layer = sum(
                    n * (by[s][which] if which == "default_us" else by[s]["best"]["us"])
                    for s, n in counts.items()
                )
                est[f"{layout}_{which.removesuffix('_us')}_ms"] = per_layer * LAYERS / 1e3
            except (KeyError, TypeError):
                pass
        try:
            est[f"{layout}_bf16_ms"] = sum(n * by[s]["bf16_us"] for s, n in counts.items()) * LAYERS / 1e3
        except KeyError:
            pass
    return est


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tokens", nargs="+", type=int, default=[1, 8])
    p.add_argument("--prefill", action="store_true", help="also M = 128 (the dot kernel's prefill tiles)")
    p.add_argument("--full", action="store_true", help="the wider GEMV tile grid (minutes)")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--variants", nargs="+", default=["fused", "gemv", "dot", "fused-int", "gemv-int"])
    p.add_argument("--budget", type=float, default=100.0, help="seconds after which nothing new starts")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gemv_sweep needs a CUDA GPU", file=sys.stderr)
        return 2
    begin = time.perf_counter()
    deadline = begin + args.budget
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "date": time.strftime("%Y-%m-%d"),
        "results": [],
    }
    g = torch.Generator(device="cuda").manual_seed(0)
    tokens = list(args.tokens) + ([128] if args.prefill else [])
    for m in tokens:
        for name in args.shapes:
            if time.perf_counter() > deadline:
                report.setdefault("skipped", []).append([name, m])
                continue
            k, sizes = SHAPES[name]
            try:
                case = Case(name, k, sizes, m, g)
                res = sweep_case(case, args.variants, args.full, deadline)
                del case
            except Exception as e:
                res = {
                    "shape": name,
                    "M": m,
                    "error": f"{type(e).__name__}: {e}",
                    "trace": traceback.format_exc(),
                }
            report["results"].append(res)
            brief = {k: res.get(k) for k in ("shape", "M", "bf16_us", "default_us", "best", "error")}
            print(json.dumps(brief), flush=True)
            torch.cuda.empty_cache()
            report["per_token_1b"] = {m: per_token(report["results"], m) for m in tokens}
            Path(args.out).write_text(json.dumps(report, indent=1))
    report["all_ok"] = all(
        r.get("ok") for res in report["results"] for r in res.get("rows", []) if "error" not in r
    ) and not any("error" in res for res in report["results"])
    report["wall_s"] = time.perf_counter() - begin
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({"per_token_1b": report["per_token_1b"], "all_ok": report["all_ok"]}, indent=1))
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
