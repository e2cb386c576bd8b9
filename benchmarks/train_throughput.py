"""Training throughput of the 1.58-bit model against its bf16 nn.Linear twin, side by side on one GPU.

For each preset (1b, 125m, 350m; sequence 2048; synthetic random tokens; bf16 autocast; fused
AdamW; global-norm clipping) and each variant, every step is the trainer's own
(`bittern.train.step.TrainStep`: forward and backward, clipping, one host sync, the optimizer
step, the refresh of the ternary codes):

    twin-compiled, fast-compiled, ref-compiled, twin-eager, fast-eager, ref-eager,
    fast-compiled-int8-gi (grad_input on int8), fast-compiled-int8-gi-gw (and grad_weight;
    these two on the 1b preset only, unless --int8-presets says otherwise),
    fast-compiled-saved-codes (the activation codes saved for backward, not remade),
    twin-sublayer-compiled, fast-sublayer-compiled (model.norm_placement = "sublayer", BitNet
    b1.58 2B's layout: each of a block's 4 norms fused with the int8 quantization of its output
    on the fast path; the fast one is compared with the twin of the same layout),
    fast-sublayer-compiled-int8-gi, fast-sublayer-compiled-int8-gi-gw (the int8 backward options
    on the sub-layer layout)

("twin" = plain nn.Linear, "ref" = BitLinear's PyTorch reference path, "fast" = the fused
Triton kernels of bittern.kernels) it records tokens/s, step time, peak memory and MFU after a
few warm-up steps. `--wraps none,ddp,fsdp,fsdp-keep,fsdp-packed` also runs each variant inside
DDP, FSDP2, FSDP2 keeping the gathered weights for the backward (reshard_after_forward=False),
or FSDP2 with the 2-bit packed all-gather, on a process group of one rank: what the
wrappers cost besides communication (the ceiling on their scaling efficiency), and a GPU run of
their code paths. Compilation is per transformer block by default (`--compile regional`, as
torchtitan does: one compile serves every block); `--compile whole` compiles the model as the
trainer does, at several times the compile time. Each variant is time-boxed, the whole run
has a deadline, and the JSON is rewritten after every variant, so a timeout keeps the rest.

`--equal-learning` instead trains the 125m preset for 500 steps on the reference path, the
fast path and the fast path with each int8 backward option, from the same seed on the same
batches, and reports the validation loss of each (on `--data DIR`, a prepared dataset, or a
synthetic Markov language).

    PYTHONPATH=. python benchmarks/train_throughput.py --out throughput.json
    PYTHONPATH=. python benchmarks/train_throughput.py --equal-learning --data DIR --out equal.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from bittern.config import ClipConfig, DistConfig, OptimConfig
from bittern.models import ModelConfig, build_model
from bittern.monitor.perf import peak_flops
from bittern.nn import KernelOptions, configure_fast_path
from bittern.train.clip import GradClipper
from bittern.train.optim import build_optimizer
from bittern.train.step import TrainStep

GB = 1024**3
DEVICE = "cuda"  # --device cpu (TRITON_INTERPRET=1, --presets tiny) only smoke-tests this script
PRESET_BATCH = {"125m": 8, "350m": 8, "1b": 4, "tiny": 2}  # sequences per step (one micro-batch)
WRAPS = ("none", "ddp", "fsdp", "fsdp-keep", "fsdp-packed")  # keep: reshard_after_forward=False


@dataclass(frozen=True)
class Variant:
    name: str
    quant: str  # "none": the nn.Linear twin; "ternary": BitLinear
    compiled: bool
    kernels: KernelOptions | None = None  # ternary only: the fused path's options (enabled=False: reference)
    norm_placement: str | None = None  # model.norm_placement; None: the preset's (llama: "inside")


OFF = KernelOptions(enabled=False)
INT8_GI = KernelOptions(grad_input_int8=True)
INT8_GI_GW = KernelOptions(grad_input_int8=True, grad_weight_int8=True)
VARIANTS = [  # most important first: a deadline cuts from the end
    Variant("twin-compiled", "none", True),
    Variant("fast-compiled", "ternary", True, KernelOptions()),
    Variant("ref-compiled", "ternary", True, OFF),
    Variant("twin-eager", "none", False),
    Variant("fast-eager", "ternary", False, KernelOptions()),
    Variant("ref-eager", "ternary", False, OFF),
    Variant("fast-compiled-int8-gi", "ternary", True, INT8_GI),
    Variant("fast-compiled-int8-gi-gw", "ternary", True, INT8_GI_GW),
    # the activation codes kept from forward to backward (as before kernels.recompute_codes)
    Variant("fast-compiled-saved-codes", "ternary", True, KernelOptions(recompute_codes=False)),
    # BitNet b1.58 2B's sub-layer norms (issue 15's choice): 4 fused norm + quantize passes per block
    Variant("twin-sublayer-compiled", "none", True, norm_placement="sublayer"),
    Variant("fast-sublayer-compiled", "ternary", True, KernelOptions(), norm_placement="sublayer"),
    Variant("fast-sublayer-compiled-int8-gi", "ternary", True, INT8_GI, norm_placement="sublayer"),
    Variant("fast-sublayer-compiled-int8-gi-gw", "ternary", True, INT8_GI_GW, norm_placement="sublayer"),
]


def build(preset: str, variant: Variant, vocab: int, seq: int, cache_codes: bool = True) -> torch.nn.Module:
    """The model of `preset` on the GPU, initialised from seed 0, its fast path configured.

    `cache_codes` False: ternarize in every forward, as the trainer has it under FSDP2.
    """
    torch.manual_seed(0)
    cfg = ModelConfig(
        preset=preset,
        quant=variant.quant,
        vocab_size=vocab,
        max_seq_len=seq,
        norm_placement=variant.norm_placement,
    ).resolved()
    with torch.device(DEVICE):
        model = build_model(cfg)
    if variant.kernels is not None:
        # --device cpu: the fused path on CPU tensors, as the kernel tests run it (interpreted)
        devices = ("cuda", "cpu") if DEVICE == "cpu" else ("cuda",)
        fast = configure_fast_path(model, replace(variant.kernels, cache_codes=cache_codes, devices=devices))
        assert (fast > 0) == variant.kernels.enabled, f"{fast} layers on the fast path"
    return model


def compiled_parts(model: torch.nn.Module, variant: Variant, mode: str):
    """(forward, loss_fn): compiled per block (regional) or as a whole, else eager."""

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    if not variant.compiled:
        return model, loss_fn
    if mode == "whole":
        return torch.compile(model), loss_fn
    for block in model.layers:
        block.compile()
    return model, torch.compile(loss_fn)


def wrap_model(model: torch.nn.Module, wrap: str) -> tuple[torch.nn.Module, list]:
    """(module to call, what to run after each optimizer step) for `wrap`, on the one-rank group."""
    from bittern.distributed import parallelize
    from bittern.distributed.packed import pack_shards

    packed, keep = wrap == "fsdp-packed", wrap == "fsdp-keep"
    mode = "ddp" if wrap == "ddp" else "fsdp"
    device, bucket = torch.device(DEVICE), DistConfig.bucket_cap_mb
    wrapped = parallelize(model, mode, device, bucket, torch.bfloat16, packed, reshard_after_forward=not keep)
    return wrapped, [lambda: pack_shards(model)] if packed else []


def one_rank_group() -> None:
    """A process group of this process alone (NCCL on the GPU), for --wraps."""
    import socket

    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if DEVICE == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


@dataclass
class Steps:
    """`step(i)`: the trainer's `TrainStep` on the micro-batches `batches(i)`; returns the mean loss."""

    train_step: TrainStep
    batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]

    def __call__(self, i: int) -> float:
        return self.train_step(self.batches(i)).loss  # its one host sync: the clock sees the whole step


def make_step(model, forward, loss_fn, optimizer, batches, after_step=(), accum: int = 1) -> Steps:
    """The trainer's step (bf16 autocast, global-norm clipping at 1.0, no guard) over `batches(i)`."""

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            logits = forward(x)
        return loss_fn(logits, y)

    clipper = GradClipper(ClipConfig(mode="norm", max_norm=1.0))
    return Steps(TrainStep(model, optimizer, loss, clipper, accum=accum, after_update=after_step), batches)


def release() -> None:
    """Free what the last variant left behind (compiled graphs, cached blocks)."""
    torch._dynamo.reset()
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


# ---- throughput ------------------------------------------------------------------------


def variant_step(
    preset: str, variant: Variant, wrap: str, batch: int, vocab: int, seq: int, compile_mode: str
):
    """(model, step(i) -> loss): `preset` built as `variant`, inside `wrap`, with its optimizer,
    training on synthetic random tokens, `batch` sequences of `seq` per step."""
    model = build(preset, variant, vocab, seq, cache_codes=wrap in ("none", "ddp"))  # FSDP2: no codes kept
    forward, loss_fn = compiled_parts(model, variant, compile_mode)
    after_step = []
    if wrap != "none":  # the blocks compiled first, as the trainer does
        forward, after_step = wrap_model(model, wrap)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-4))

    def batches(i: int):
        g = torch.Generator(device=DEVICE).manual_seed(i)
        tokens = torch.randint(0, vocab, (batch, seq + 1), device=DEVICE, generator=g)
        yield tokens[:, :-1], tokens[:, 1:]

    return model, make_step(model, forward, loss_fn, optimizer, batches, after_step)


def run_variant(preset: str, variant: Variant, args, wrap: str = "none") -> dict:
    """Warm up, then time `args.steps` steps (fewer if the variant's time box runs out)."""
    start = time.perf_counter()
    batch = args.batch or PRESET_BATCH[preset]
    model, step = variant_step(preset, variant, wrap, batch, args.vocab, args.seq, args.compile)
    for i in range(args.warmup):
        step(i)
    warmup_s = time.perf_counter() - start
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(args.warmup, args.warmup + args.steps):
        t0 = time.perf_counter()
        losses.append(step(i))  # .item() syncs, so the host clock sees the whole step
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > args.variant_timeout and len(times) >= 3:
            break
    tokens = batch * args.seq
    step_s = statistics.median(times)
    peak = peak_flops(DEVICE)
    flops = model.flops_per_token(args.seq)
    return {
        "preset": preset,
        "variant": variant.name,
        "wrap": wrap,
        "batch": batch,
        "seq": args.seq,
        "params": model.num_params(non_embedding=False),
        "tokens_per_s": tokens / step_s,
        "tokens_per_s_mean": tokens * len(times) / sum(times),
        "step_time_s": step_s,
        "step_times_s": times,
        "peak_allocated_gb": torch.cuda.max_memory_allocated() / GB if DEVICE == "cuda" else 0.0,
        "peak_reserved_gb": torch.cuda.max_memory_reserved() / GB if DEVICE == "cuda" else 0.0,
        "mfu": tokens / step_s * flops / peak if peak else None,
        "flops_per_token": flops,
        "warmup_s": warmup_s,
        "final_loss": losses[-1],
    }


def ratios(results: list[dict]) -> list[dict]:
    """Side-by-side ratios per preset and wrap: against the twin (same compile mode, same wrap;
    the twin has nothing to pack) and the reference; and each wrapped run against the same variant
    unwrapped."""
    rows = []
    by = {(r["preset"], r["variant"], r.get("wrap", "none")): r for r in results if "tokens_per_s" in r}
    for (preset, name, wrap), r in by.items():
        bare = by.get((preset, name, "none"))
        if wrap != "none" and bare:
            rows.append(
                {
                    "preset": preset,
                    "variant": name,
                    "wrap": wrap,
                    "vs_unwrapped_tokens_per_s": r["tokens_per_s"] / bare["tokens_per_s"],
                    "vs_unwrapped_peak_memory": r["peak_allocated_gb"] / max(bare["peak_allocated_gb"], 1e-9),
                    "loss_minus_unwrapped": r["final_loss"] - bare["final_loss"],
                }
            )
        if not name.startswith("fast"):
            continue
        mode = "compiled" if "compiled" in name else "eager"
        mode = f"sublayer-{mode}" if "-sublayer-" in name else mode  # against the same layout's
        twin_wrap = "fsdp" if wrap == "fsdp-packed" else wrap  # the twin has nothing to pack
        twin, ref = by.get((preset, f"twin-{mode}", twin_wrap)), by.get((preset, f"ref-{mode}", wrap))
        row = {"preset": preset, "variant": name, "wrap": wrap}
        if twin:
            row["vs_twin_tokens_per_s"] = r["tokens_per_s"] / twin["tokens_per_s"]
            row["vs_twin_peak_memory"] = r["peak_allocated_gb"] / max(twin["peak_allocated_gb"], 1e-9)
        if ref:
            row["vs_ref_tokens_per_s"] = r["tokens_per_s"] / ref["tokens_per_s"]
            row["loss_minus_ref"] = r["final_loss"] - ref["final_loss"]
        rows.append(row)
    return rows


def throughput(args) -> int:
    report = header(args) | {"results": []}
    names = args.variants.split(",") if args.variants != "all" else [v.name for v in VARIANTS]
    variants = [v for v in VARIANTS if v.name in names]
    wraps = args.wraps.split(",")
    if any(w != "none" for w in wraps):
        one_rank_group()
    runs = [
        (preset, wrap, variant)
        for preset in args.presets.split(",")
        for wrap in wraps
        for variant in variants
        if not ("int8" in variant.name and preset not in args.int8_presets.split(","))
        if not (wrap == "fsdp-packed" and variant.quant == "none")  # nothing to pack
    ]
    start = time.perf_counter()
    for preset, wrap, variant in runs:
        left = args.deadline - (time.perf_counter() - start)
        row = {"preset": preset, "variant": variant.name, "wrap": wrap}
        if left < args.min_left:
            row["skipped"] = f"deadline ({left:.0f} s left)"
        else:
            try:
                row = run_variant(preset, variant, args, wrap)
            except Exception as e:  # keep the other variants' numbers (OOM included)
                traceback.print_exc()
                row["error"] = repr(e)[:500]
            release()
        report["results"].append(row)
        report["ratios"] = ratios(report["results"])
        report["wall_s"] = time.perf_counter() - start
        write(args.out, report)
        print(json.dumps({k: v for k, v in row.items() if k != "step_times_s"}), flush=True)
    print_table(report)
    Path(args.out).with_suffix(".md").write_text(markdown_table(report))
    return 0


def markdown_table(report: dict) -> str:
    """The results as a markdown table for benchmarks/RESULTS.md."""
    lines = [
        f"{report['device']}, torch {report['torch']}, triton {report['triton']}, {report['date']}, "
        f"seq {report['args']['seq']}, compile {report['args']['compile']}",
        "",
        "| preset | variant | wrap | tokens/s | step time | peak memory | MFU | vs twin (same mode) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    vs_twin = [r for r in report.get("ratios", []) if "vs_twin_tokens_per_s" in r]
    ratio = {(r["preset"], r["variant"], r["wrap"]): r for r in vs_twin}
    for r in report["results"]:
        wrap = r.get("wrap", "none")
        if "tokens_per_s" not in r:
            what = r.get("error") or r.get("skipped")
            lines.append(f"| {r['preset']} | {r['variant']} | {wrap} | {what} | | | | |")
            continue
        vs = ratio.get((r["preset"], r["variant"], wrap), {}).get("vs_twin_tokens_per_s")
        mfu = f"{r['mfu']:.1%}" if r["mfu"] else ""
        vs = "" if vs is None else f"{vs:.3f}x"
        step = f"{r['step_time_s'] * 1e3:.1f} ms"
        memory = f"{r['peak_allocated_gb']:.1f} GiB"
        speed = f"{r['tokens_per_s']:,.0f}"
        cells = [r["preset"], r["variant"], wrap, speed, step, memory, mfu, vs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def print_table(report: dict) -> None:
    print(markdown_table(report))
    for r in report.get("ratios", []):
        print(json.dumps(r))


# ---- equal learning --------------------------------------------------------------------


class MarkovTokens:
    """A learnable synthetic language: every token is followed by one of 8 fixed successors."""

    def __init__(self, vocab: int, seed: int = 0) -> None:
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        self.vocab_size = vocab
        self.successors = torch.randint(0, vocab, (vocab, 8), device=DEVICE, generator=g)

    def batch(self, seed: int, rows: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        tokens = torch.empty(rows, seq + 1, dtype=torch.long, device=DEVICE)
        tokens[:, 0] = torch.randint(0, self.vocab_size, (rows,), device=DEVICE, generator=g)
        choice = torch.randint(0, 8, (rows, seq), device=DEVICE, generator=g)
        for t in range(seq):
            tokens[:, t + 1] = self.successors[tokens[:, t], choice[:, t]]
        return tokens[:, :-1], tokens[:, 1:]


def data_source(args):
    """(vocab, train_batches(step) -> micro-batches, val_batches() -> list) from --data or Markov."""
    micro, accum = args.batch // args.accum, args.accum
    if args.data:
        from bittern.data import TokenDataset

        data = TokenDataset(Path(args.data))

        def train(step: int):
            for m in range(accum):
                x, y = data.train_batch(0, step, args.batch, args.seq, m * micro, micro)
                yield x.to(DEVICE, non_blocking=True), y.to(DEVICE, non_blocking=True)

        val = [(x.to(DEVICE), y.to(DEVICE)) for x, y in data.val_batches(args.seq, micro, args.val_batches)]
        return data.vocab_size, train, val
    source = MarkovTokens(args.vocab)

    def train(step: int):
        for m in range(accum):
            yield source.batch(step * accum + m, micro, args.seq)

    val = [source.batch(10**6 + i, micro, args.seq) for i in range(args.val_batches)]
    return args.vocab, train, val


@torch.no_grad()
def evaluate(forward, val) -> float:
    total, count = 0.0, 0
    for x, y in val:
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            logits = forward(x)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    return total / count


def learn(variant: Variant, args, vocab: int, train, val) -> dict:
    """Train `args.learn_preset` for args.steps steps; validation loss every args.eval_every steps."""
    start = time.perf_counter()
    model = build(args.learn_preset, variant, vocab, args.seq)
    forward, loss_fn = compiled_parts(model, variant, args.compile)
    optimizer = build_optimizer(model, OptimConfig(lr=args.lr))
    step = make_step(model, forward, loss_fn, optimizer, train, accum=args.accum)
    warmup = max(1, args.steps // 10)
    curve, val_curve = {}, {}
    for i in range(args.steps):
        progress = max(0.0, (i - warmup) / max(1, args.steps - warmup))
        lr = args.lr * (
            min(1.0, (i + 1) / warmup) if i < warmup else 0.1 + 0.45 * (1 + math.cos(math.pi * progress))
        )
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        loss = step(i)
        if i % 10 == 0 or i == args.steps - 1:
            curve[i] = loss
        if (i + 1) % args.eval_every == 0 or i == args.steps - 1:
            val_curve[i + 1] = evaluate(forward, val)
    return {
        "variant": variant.name,
        "final_val_loss": val_curve[args.steps],
        "val_curve": val_curve,
        "train_curve": curve,
        "wall_s": time.perf_counter() - start,
    }


def equal_learning(args) -> int:
    report = header(args) | {"results": []}
    vocab, train, val = data_source(args)
    report["data"] = args.data or f"synthetic Markov, vocab {vocab}"
    names = ["ref-compiled", "fast-compiled", "fast-compiled-int8-gi", "fast-compiled-int8-gi-gw"]
    if args.variants != "all":
        names = [n for n in names if n in args.variants.split(",")]
    start = time.perf_counter()
    for variant in [v for v in VARIANTS if v.name in names]:
        if not args.compile_equal:
            variant = replace(variant, name=variant.name.replace("compiled", "eager"), compiled=False)
        row = {"variant": variant.name}
        if args.deadline - (time.perf_counter() - start) < args.min_left:
            row["skipped"] = "deadline"
        else:
            try:
                row = learn(variant, args, vocab, train, val)
            except Exception as e:
                traceback.print_exc()
                row["error"] = repr(e)[:500]
            release()
        report["results"].append(row)
        ref = report["results"][0].get("final_val_loss")
        for r in report["results"]:
            if ref and "final_val_loss" in r:
                r["val_loss_vs_ref"] = r["final_val_loss"] / ref - 1
        write(args.out, report)
        print(json.dumps(row), flush=True)
    for r in report["results"]:
        if "final_val_loss" in r:
            print(
                f"{r['variant']:28s} val loss {r['final_val_loss']:.4f}  vs ref {r['val_loss_vs_ref']:+.3%}"
            )
    return 0


# ---- common ----------------------------------------------------------------------------


def header(args) -> dict:
    import triton

    return {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "args": vars(args),
    }


def write(path: str, report: dict) -> None:
    Path(path).write_text(json.dumps(report, indent=1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="train_throughput.json")
    p.add_argument("--presets", default="1b,125m,350m")
    p.add_argument("--variants", default="all", help="comma-separated names (see the docstring)")
    p.add_argument("--int8-presets", default="1b", help="presets that also run the int8-backward variants")
    p.add_argument("--compile", choices=["regional", "whole"], default="regional")
    p.add_argument(
        "--wraps", default="none", help=f"comma-separated, of {', '.join(WRAPS)} (one-rank process group)"
    )
    p.add_argument("--seq", type=int, default=None, help="default 2048 (1024 with --equal-learning)")
    p.add_argument(
        "--batch", type=int, default=0, help="sequences per step (default per preset; 32 learning)"
    )
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--steps", type=int, default=None, help="timed steps (default 10; 500 with --equal-learning)"
    )
    p.add_argument(
        "--variant-timeout", type=float, default=90.0, help="seconds per variant, compile included"
    )
    p.add_argument("--deadline", type=float, default=420.0, help="seconds for the whole run")
    p.add_argument("--min-left", type=float, default=30.0, help="do not start a variant with less left")
    p.add_argument("--equal-learning", action="store_true")
    p.add_argument("--data", default="", help="a prepared dataset folder (equal learning); else synthetic")
    p.add_argument("--accum", type=int, default=2, help="micro-batches per step (equal learning)")
    p.add_argument("--learn-preset", default="125m", help="the preset equal learning trains")
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--val-batches", type=int, default=20)
    p.add_argument(
        "--eager-learning", dest="compile_equal", action="store_false", help="equal learning eager"
    )
    p.add_argument("--device", default="cuda", help="cpu: a smoke test of this script (TRITON_INTERPRET=1)")
    args = p.parse_args()
    bad = set(args.wraps.split(",")) - set(WRAPS)
    if bad:
        p.error(f"--wraps: unknown {', '.join(sorted(bad))} (choose from {', '.join(WRAPS)})")
    if args.wraps != "none" and (args.compile == "whole" or args.equal_learning):
        p.error("--wraps needs --compile regional (blocks compiled before wrapping) and no --equal-learning")
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("train_throughput needs a CUDA GPU", file=sys.stderr)
        return 2
    if args.equal_learning:
        args.seq, args.steps = args.seq or 1024, args.steps or 500
        args.batch = args.batch or 32
        if args.deadline == 420.0:
            args.deadline = 540.0
        return equal_learning(args)
    args.seq, args.steps = args.seq or 2048, args.steps or 10
    return throughput(args)


if __name__ == "__main__":
    sys.exit(main())
