"""GPU self-check of the fused path: each int8 GEMM kernel, eager and compiled, against the reference.

What the CPU tests cannot show, on one CUDA GPU in about a minute:

1. the int8 GEMM (pointer kernel, and the TMA kernel of `BITTERN_INT8_MM=tma`) exact against
   its int64 reference at the 1B preset's shapes;
2. a small Llama trained 5 steps by the trainer's step (`bittern.train.step.TrainStep`: fused
   AdamW, bf16 autocast, the code refresh after each optimizer step) on the fused path, eager
   and compiled block by block, with each kernel: per-step losses against the eager fused run
   (the compiled graphs must read the codes each refresh rewrites in place) and against the
   reference path (`--norm-placement sublayer`: BitNet 2B's sub-layer norms, each fused with its
   quantization); after the last step, every layer's codes against a fresh ternarization of
   its weight (the refresh is then a replayed CUDA graph).

JSON out; exit status 1 if a check fails.

    PYTHONPATH=. python benchmarks/gpu_selfcheck.py --out check.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

CACHE_CHECKS: dict = {}
GEMM_SHAPES = (
    (8192, 2048, 2048),
    (8192, 5632, 2048),
    (8192, 2048, 5632),
    (8192, 256, 2048),
    (77, 2048, 2048),
)
STEPS = 5  # the weight refresh is eager after steps 1-2, recorded after 2, replayed from 3 on


def check_gemms(kernel: str) -> list[dict]:
    from bittern.kernels import int8_mm as module

    module.KERNEL = kernel
    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for M, N, K in GEMM_SHAPES:
        a = torch.randint(-128, 128, (M, K), dtype=torch.int8, device="cuda", generator=g)
        b = torch.randint(-1, 2, (N, K), dtype=torch.int8, device="cuda", generator=g)
        row = torch.rand(M, device="cuda", generator=g) + 0.5
        col = torch.rand(N, device="cuda", generator=g) + 0.5
        # the int64 reference on the CPU (CUDA has no int64 matmul)
        ca, cb, crow, ccol = (t.cpu() for t in (a, b, row, col))
        exact = torch.equal(module.int8_mm(a, b).cpu(), module.int8_mm_reference(ca, cb))
        want = module.int8_mm_reference(ca, cb, crow, ccol, torch.bfloat16).to("cuda")
        # twice: the first call autotunes, the second launches the remembered tile directly
        scaled = all(torch.equal(module.int8_mm(a, b, row, col, torch.bfloat16), want) for _ in range(2))
        rows.append({"kernel": kernel, "shape": [M, N, K], "int32_exact": exact, "bf16_exact": scaled})
    return rows


def stale_codes(model: torch.nn.Module, refresher) -> dict:
    """Each layer's kept codes against a fresh ternarization of its weight: the replayed refresh's check."""
    from bittern.kernels.weightquant import ternarize_reference
    from bittern.nn import bitlinear_layers

    worst_codes = worst_gamma = 0.0
    layers = [layer for _, layer in bitlinear_layers(model) if layer.ternary_codes is not None]
    for layer in layers:
        o = layer.options
        codes, gamma = ternarize_reference(
            layer.weight.detach(), o.gamma_multiplier, o.granularity == "channel"
        )
        worst_codes = max(worst_codes, (layer.ternary_codes != codes).float().mean().item())
        worst_gamma = max(worst_gamma, ((layer.ternary_gamma - gamma).abs() / gamma).max().item())
    return {
        "layers": len(layers),
        "replaying": refresher.replaying,
        "codes_differing": worst_codes,
        "gamma_rel_diff": worst_gamma,
    }


def train_losses(kernel: str, fast: bool, compiled: bool, norm_placement: str = "inside") -> list[float]:
    from bittern.config import ClipConfig, OptimConfig
    from bittern.kernels import int8_mm as module
    from bittern.models import ModelConfig, build_model
    from bittern.nn import KernelOptions, configure_fast_path
    from bittern.train.clip import GradClipper
    from bittern.train.compiling import compile_blocks
    from bittern.train.optim import build_optimizer
    from bittern.train.step import TrainStep

    module.KERNEL = kernel
    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = ModelConfig(
        preset="tiny",
        vocab_size=4096,
        dim=1024,
        n_layers=4,
        n_heads=8,
        n_kv_heads=4,
        ffn_dim=2816,
        max_seq_len=512,
        norm_placement=norm_placement,
    )
    with torch.device("cuda"):
        model = build_model(cfg.resolved())
    assert (configure_fast_path(model, KernelOptions(enabled=fast)) > 0) == fast
    if compiled:
        compile_blocks(model)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3))

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", torch.bfloat16):
            logits = model(x)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    train_step = TrainStep(model, optimizer, loss, GradClipper(ClipConfig(mode="none")))
    losses = []
    for step in range(STEPS):
        g = torch.Generator(device="cuda").manual_seed(step)
        tokens = torch.randint(0, 4096, (4, 513), device="cuda", generator=g)
        losses.append(train_step([(tokens[:, :-1], tokens[:, 1:])]).loss)
    if fast:
        CACHE_CHECKS[(kernel, compiled)] = stale_codes(model, train_step.codes)
    return losses


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--kernels", default="pointer,tma")
    p.add_argument("--no-gemm", action="store_true", help="only the training checks")
    p.add_argument(
        "--norm-placement", default="inside", help="model.norm_placement of the trained model (sublayer too)"
    )
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_selfcheck.py: needs a CUDA GPU", file=sys.stderr)
        return 2
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    ok = True
    report["gemm"] = []
    for kernel in [] if args.no_gemm else args.kernels.split(","):
        try:
            rows = check_gemms(kernel)
        except Exception as e:  # a kernel that does not build or launch here: recorded, not fatal
            rows = [{"kernel": kernel, "error": repr(e)[:500]}]
        report["gemm"] += rows
        for r in rows:
            ok = ok and r.get("int32_exact", False) and r.get("bf16_exact", False)
            print("gemm", r, flush=True)
    report["norm_placement"] = args.norm_placement
    reference = train_losses("pointer", fast=False, compiled=False, norm_placement=args.norm_placement)
    report["train"] = {"reference eager": reference}
    print("reference eager", reference, flush=True)
    for kernel in args.kernels.split(","):
        for compiled in (False, True):
            name = f"fast {kernel} {'compiled' if compiled else 'eager'}"
            try:
                placement = args.norm_placement
                losses = train_losses(kernel, fast=True, compiled=compiled, norm_placement=placement)
            except Exception as e:
                report["train"][name] = repr(e)[:500]
                print(name, "FAILED", repr(e)[:300], flush=True)
                ok = False
                continue
            report["train"][name] = losses
            eager = report["train"].get(f"fast {kernel} eager")
            close_eager = isinstance(eager, list) and all(
                abs(a - b) <= 2e-3 * abs(b) for a, b in zip(losses, eager, strict=True)
            )
            close_ref = all(abs(a - b) <= 2e-2 * abs(b) for a, b in zip(losses, reference, strict=True))
            cache = CACHE_CHECKS[(kernel, compiled)]
            fresh = cache["replaying"] and cache["codes_differing"] < 1e-5 and cache["gamma_rel_diff"] < 1e-5
            report["train"][name + " cache"] = cache
            ok = ok and close_eager and close_ref and fresh
            print(name, losses, "vs fast eager", close_eager, "vs reference", close_ref, flush=True)
            print(name, "codes after the last step", cache, "fresh", fresh, flush=True)
    report["ok"] = ok
    Path(args.out).write_text(json.dumps(report, indent=1))
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
