"""GPU self-check of the fused path: each int8 GEMM kernel, eager and compiled, against the reference.

What the CPU tests cannot show, on one CUDA GPU, most important first (each check's result is
written to the JSON as it ends, so a time limit keeps what finished; `--budget` starts nothing
new past its seconds and records the rest as skipped):

1. the fused training path of the model's `--norm-placement`, in float32 against the reference
   path (`KernelOptions(enabled=False)`) at the check model's shapes, forward and backward
   (input, weight and norm-weight gradients): one layer as the block calls it (down_proj after
   its sub-norm, or with its own inside norm), the shared groups (q/k/v and gate/up after the
   pre-norm), and one block compiled with the trainer's backend (also against the eager fused
   block);
2. a small Llama trained 5 steps by the trainer's step (`bittern.train.step.TrainStep`: fused
   AdamW, bf16 autocast, the code refresh after each optimizer step) on the fused path, eager
   and compiled block by block, with each kernel: per-step losses against the eager fused run
   (the compiled graphs must read the codes each refresh rewrites in place) and against the
   reference path (`--norm-placement sublayer`: BitNet 2B's sub-layer norms, each fused with its
   quantization); after the last step, every layer's codes against a fresh ternarization of
   its weight (the refresh is then a replayed CUDA graph);
3. the int8 GEMM (pointer kernel, and the TMA kernel of `kernels.int8_mm = "tma"`) exact against
   its reference at the 1B preset's shapes. The exact product is made on the GPU in float64
   (every partial sum an integer below 2^53) and scaled as `int8_mm_reference` scales, which
   it must equal on the smallest shape (`--gemm-reference cpu`: `int8_mm_reference` in int64
   on the CPU at every shape, minutes for the 8192-row ones).

JSON out (`benchmarks.common.run_checks`: per check its status, seconds and result); exit
status 1 if a check fails, 3 if none failed but some were skipped.

    PYTHONPATH=. python benchmarks/gpu_selfcheck.py --out check.json --budget 500
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.common without PYTHONPATH

GEMM_SHAPES = (
    (8192, 2048, 2048),
    (8192, 5632, 2048),
    (8192, 2048, 5632),
    (8192, 256, 2048),
    (77, 2048, 2048),
)
COMPILE_BACKEND = "inductor"  # the compiled checks' backend: train.compile_backend's default
STEPS = 5  # the weight refresh is eager after steps 1-2, recorded after 2, replayed from 3 on
# the trained model's shapes (the parts checks build the same model)
CHECK_MODEL = dict(
    preset="tiny",
    vocab_size=4096,
    dim=1024,
    n_layers=4,
    n_heads=8,
    n_kv_heads=4,
    ffn_dim=2816,
    max_seq_len=512,
)
PART_TOKENS = (4, 512)
# largest |fused - reference| over the largest |reference|, float32: the products are exact, the
# reference's float32 sums and an activation code that rounds the other way (float32 norm
# statistics summed in another order) move it by well under this
PART_TOL = 2e-3


# ---- 1. the fused path's parts against the reference path -------------------------------


def rel_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-30)).item()


def part_call(part: str, model: torch.nn.Module):
    """(function of x computing the part's outputs in `model`, the shape of x's last dimension)."""
    from bittern.nn import apply_shared

    block = model.layers[0]
    attn, mlp = block.self_attn, block.mlp
    if part == "layer":  # one projection after its sub-norm (sublayer) or with its own norm (inside)
        return (lambda x: apply_shared((mlp.down_proj,), x, norm=mlp.ffn_sub_norm)), mlp.down_proj.in_features
    if part == "group":  # the shared groups, each after its pre-norm
        return (
            lambda x: (
                apply_shared((attn.q_proj, attn.k_proj, attn.v_proj), x, norm=block.input_layernorm)
                + apply_shared((mlp.gate_proj, mlp.up_proj), x, norm=block.post_attention_layernorm)
            )
        ), attn.q_proj.in_features
    if part == "block":
        return (
            lambda x: [block(x, model.rope_cos[: x.shape[1]], model.rope_sin[: x.shape[1]])]
        ), model.config.dim
    raise ValueError(part)


def part_grads(model: torch.nn.Module, part: str, x: torch.Tensor, seed: int) -> tuple[list, dict]:
    """The part's outputs on x, and the gradients (of x and each parameter) of a fixed random probe."""
    fn, _ = part_call(part, model)
    x = x.detach().clone().requires_grad_(True)
    outs = fn(x)
    g = torch.Generator(device=x.device).manual_seed(seed)
    probes = [torch.randn(o.shape, device=o.device, generator=g) for o in outs]
    sum((o.float() * p).sum() for o, p in zip(outs, probes, strict=True)).backward()
    grads = {"x": x.grad}
    grads.update({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    return [o.detach() for o in outs], grads


def check_part(
    part: str,
    norm_placement: str,
    kernel: str = "pointer",
    device: str = "cuda",
    model_dims: dict | None = None,
    tokens: tuple[int, int] = PART_TOKENS,
    devices: tuple[str, ...] = ("cuda",),
) -> dict:
    """The fused path's `part` ("layer", "group" or "block": compiled) against the reference, float32."""
    from bittern.models import ModelConfig, build_model
    from bittern.nn import KernelOptions, configure_fast_path

    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = ModelConfig(**dict(model_dims or CHECK_MODEL, n_layers=1), norm_placement=norm_placement).resolved()
    with torch.device(device):
        model = build_model(cfg)
    with torch.no_grad():  # norm weights off 1, so their gradients and their use both show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    reference = copy.deepcopy(model)
    assert configure_fast_path(model, KernelOptions(devices=devices, int8_mm=kernel)) == 7
    configure_fast_path(reference, KernelOptions(enabled=False))
    _, width = part_call(part, model)
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(*tokens, width, device=device, generator=g)
    want, want_grads = part_grads(reference, part, x, seed=2)
    runs = {"fused eager": part_grads(model, part, x, seed=2)}
    if part == "block":
        model.zero_grad(set_to_none=True)
        model.layers[0].compile(backend=COMPILE_BACKEND)  # as `compile_blocks` compiles
        runs = {"fused compiled": part_grads(model, part, x, seed=2), **runs}
    result = {
        "norm_placement": norm_placement,
        "kernel": kernel,
        "x_shape": list(x.shape),
        "tolerance": PART_TOL,
    }
    ok = True
    for name, (outs, grads) in runs.items():
        assert grads.keys() == want_grads.keys(), sorted(set(grads) ^ set(want_grads))
        out_diff = max(rel_diff(o, w) for o, w in zip(outs, want, strict=True))
        grad_diffs = {n: rel_diff(gr, want_grads[n]) for n, gr in grads.items()}
        worst = max(grad_diffs, key=grad_diffs.get)
        result[name] = {
            "outputs_rel_diff": out_diff,
            "grad_x_rel_diff": grad_diffs["x"],
            "worst_grad": worst,
            "worst_grad_rel_diff": grad_diffs[worst],
            "grads_checked": len(grad_diffs),
        }
        ok = ok and out_diff <= PART_TOL and grad_diffs[worst] <= PART_TOL
    if part == "block":  # the compiled block against the eager fused one as well
        (outs, grads), (eager_outs, eager_grads) = runs["fused compiled"], runs["fused eager"]
        result["compiled vs fused eager"] = {
            "outputs_rel_diff": rel_diff(outs[0], eager_outs[0]),
            "worst_grad_rel_diff": max(rel_diff(gr, eager_grads[n]) for n, gr in grads.items()),
        }
        ok = ok and max(result["compiled vs fused eager"].values()) <= PART_TOL
    result["ok"] = ok
    return result


# ---- 2. training steps: fused eager and compiled against the reference ----------------------


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


def train_losses(
    kernel: str, fast: bool, compiled: bool, norm_placement: str = "inside"
) -> tuple[list[float], dict | None]:
    """Per-step losses of STEPS trainer steps, and (fast path only) the kept codes' check after them."""
    from bittern.config import ClipConfig, OptimConfig
    from bittern.models import ModelConfig, build_model
    from bittern.nn import KernelOptions, configure_fast_path
    from bittern.train.clip import GradClipper
    from bittern.train.compiling import compile_blocks
    from bittern.train.optim import build_optimizer
    from bittern.train.step import TrainStep

    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = ModelConfig(**CHECK_MODEL, norm_placement=norm_placement)
    with torch.device("cuda"):
        model = build_model(cfg.resolved())
    assert (configure_fast_path(model, KernelOptions(enabled=fast, int8_mm=kernel)) > 0) == fast
    if compiled:
        compile_blocks(model, COMPILE_BACKEND)
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
    return losses, stale_codes(model, train_step.codes) if fast else None


def check_reference_training(runs: dict, norm_placement: str) -> dict:
    losses, _ = train_losses("pointer", fast=False, compiled=False, norm_placement=norm_placement)
    runs["reference eager"] = losses
    return {"losses": losses, "ok": True}


def check_fast_training(runs: dict, kernel: str, compiled: bool, norm_placement: str) -> dict:
    """The fused run's losses against the eager fused run (compiled) and the reference; its codes fresh."""
    name = f"fast {kernel} {'compiled' if compiled else 'eager'}"
    losses, cache = train_losses(kernel, fast=True, compiled=compiled, norm_placement=norm_placement)
    runs[name] = losses
    reference, eager = runs.get("reference eager"), runs.get(f"fast {kernel} eager")
    close_eager = eager is not None and all(
        abs(a - b) <= 2e-3 * abs(b) for a, b in zip(losses, eager, strict=True)
    )
    close_ref = reference is not None and all(
        abs(a - b) <= 2e-2 * abs(b) for a, b in zip(losses, reference, strict=True)
    )
    fresh = cache["replaying"] and cache["codes_differing"] < 1e-5 and cache["gamma_rel_diff"] < 1e-5
    return {
        "losses": losses,
        "close_to_fast_eager": close_eager,
        "close_to_reference": close_ref if reference is not None else "no reference run",
        "cache": cache,
        "codes_fresh": fresh,
        "ok": close_eager and close_ref and fresh,
    }


# ---- 3. the int8 GEMM kernels at the 1B shapes ----------------------------------------------


def gemm_reference_gpu(a, b, row=None, col=None, out_dtype=torch.int32) -> torch.Tensor:
    """`int8_mm_reference` on the GPU: the product in float64 is exact (|each sum| <= 128 K < 2^53),
    then the same float32 scaling."""
    acc = a.double() @ b.double().t()
    if row is None and col is None:
        return acc.to(out_dtype)
    c = acc.float()
    if col is not None:
        c = c * (col if col.numel() > 1 else col.reshape(()))
    if row is not None:
        c = c / row[:, None]
    return c.to(out_dtype)


def check_gemms(kernel: str, reference: str = "gpu") -> list[dict]:
    from bittern.kernels import int8_mm as module

    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for M, N, K in GEMM_SHAPES:
        a = torch.randint(-128, 128, (M, K), dtype=torch.int8, device="cuda", generator=g)
        b = torch.randint(-1, 2, (N, K), dtype=torch.int8, device="cuda", generator=g)
        row = torch.rand(M, device="cuda", generator=g) + 0.5
        col = torch.rand(N, device="cuda", generator=g) + 0.5
        if reference == "cpu" or M * N * K <= 77 * 2048 * 2048:
            # the int64 reference on the CPU (CUDA has no int64 matmul)
            ca, cb, crow, ccol = (t.cpu() for t in (a, b, row, col))
            want_int = module.int8_mm_reference(ca, cb).cuda()
            want = module.int8_mm_reference(ca, cb, crow, ccol, torch.bfloat16).cuda()
            if reference == "gpu":  # the GPU reference used for the large shapes, held to it here
                assert torch.equal(gemm_reference_gpu(a, b), want_int), "float64 product != int64 reference"
                assert torch.equal(gemm_reference_gpu(a, b, row, col, torch.bfloat16), want), (
                    "scaled reference"
                )
        else:
            want_int = gemm_reference_gpu(a, b)
            want = gemm_reference_gpu(a, b, row, col, torch.bfloat16)
        exact = torch.equal(module.int8_mm(a, b, kernel=kernel), want_int)
        # twice: the first call autotunes, the second launches the remembered tile directly
        scaled = all(
            torch.equal(module.int8_mm(a, b, row, col, torch.bfloat16, kernel=kernel), want) for _ in range(2)
        )
        rows.append(
            {
                "kernel": kernel,
                "shape": [M, N, K],
                "reference": reference,
                "int32_exact": exact,
                "bf16_exact": scaled,
                "ok": exact and scaled,
            }
        )
    return rows


def build_checks(args) -> list:
    """(name, check) in the order they run: the parts, training, the GEMMs (`--only` prefixes kept)."""
    kernels = args.kernels.split(",")
    placement = args.norm_placement
    runs: dict = {}  # the training runs' losses, which later checks compare against
    checks = [
        (f"{part} {placement} {kernels[0]}", partial(check_part, part, placement, kernels[0]))
        for part in ("layer", "group", "block")
    ]
    checks.append(("train reference eager", partial(check_reference_training, runs, placement)))
    for kernel in kernels:
        for compiled in (False, True):
            name = f"train fast {kernel} {'compiled' if compiled else 'eager'}"
            checks.append((name, partial(check_fast_training, runs, kernel, compiled, placement)))
    if not args.no_gemm:
        checks += [
            (f"gemm {kernel}", partial(check_gemms, kernel, args.gemm_reference)) for kernel in kernels
        ]
    if args.only:
        checks = [(name, fn) for name, fn in checks if name.startswith(tuple(args.only.split(",")))]
    return checks


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--kernels", default="pointer,tma")
    p.add_argument(
        "--no-gemm", action="store_true", help="no GEMM checks (the parts and training checks only)"
    )
    p.add_argument(
        "--norm-placement", default="inside", help="model.norm_placement of the checked model (sublayer too)"
    )
    p.add_argument(
        "--gemm-reference",
        choices=("gpu", "cpu"),
        default="gpu",
        help="where the GEMMs' exact product is made",
    )
    p.add_argument(
        "--budget", type=float, default=None, help="seconds: no check starts past it (the rest skipped)"
    )
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated check name prefixes to run (layer,group,block,train,gemm)",
    )
    return p.parse_args(argv)


def main() -> int:
    start = time.monotonic()
    args = parse_args()
    if not torch.cuda.is_available():
        print("gpu_selfcheck.py: needs a CUDA GPU", file=sys.stderr)
        return 2
    from benchmarks.common import checks_exit_status, run_checks

    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "norm_placement": args.norm_placement,
    }
    report = run_checks(build_checks(args), args.out, report, args.budget, start)
    print(
        "all checks passed"
        if checks_exit_status(report) == 0
        else f"ok={report['ok']} skipped={report['skipped']}"
    )
    return checks_exit_status(report)


if __name__ == "__main__":
    sys.exit(main())
