"""Each kernel of bittern.kernels on the GPU: checked against its reference, timed against its floor.

At the 1B shapes (M = 4 x 2048 tokens; hidden 2048, FFN 5632, k/v projections 256 wide):
every kernel gets fresh random inputs and poisoned outputs (the allocator's next blocks
filled with NaN, or -128 for codes, which no quantizer here produces) and is compared with
its PyTorch reference; then it is timed with triton.testing.do_bench (median, L2 flushed)
against its floor: bytes over the measured device-copy bandwidth, or operations over the
measured int8 / bf16 GEMM rate (the best of cuBLAS and the Triton int8 GEMM), whichever is
larger. The int8 GEMM is timed for each tile config of its autotuner, and whole layers
(forward + backward) against nn.Linear and the reference BitLinear. JSON out, table last.

    PYTHONPATH=. python benchmarks/kernel_bench.py --out kernels.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

DATASHEET = {  # dense peaks, for reference only: floors use the rates measured here
    "H100": {"bf16_flops": 989.4e12, "int8_ops": 1978.9e12, "hbm_bytes_s": 3.35e12},
    "H200": {"bf16_flops": 989.4e12, "int8_ops": 1978.9e12, "hbm_bytes_s": 4.8e12},
}
# 1B Llama linears as (name, out_features N, in_features K)
LAYERS = [
    ("q/o_proj", 2048, 2048),
    ("k/v_proj", 256, 2048),
    ("gate/up_proj", 5632, 2048),
    ("down_proj", 2048, 5632),
]
POISON_INT8 = -128
DEVICE = "cuda"  # --device cpu (with TRITON_INTERPRET=1 and --shrink) only smoke-tests this script


def bench(fn) -> float:
    """Median milliseconds of fn() over about 50 ms of repeats (triton.testing.do_bench)."""
    import triton.testing

    if DEVICE == "cpu":  # smoke test: run it twice, time the second
        fn()
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def poison(*specs: tuple[tuple[int, ...], torch.dtype]) -> None:
    """Fill the blocks the caching allocator hands out next: NaN floats, -128 int8, int32 minimum."""
    bufs = []
    for shape, dtype in specs:
        t = torch.empty(shape, dtype=dtype, device=DEVICE)
        if dtype.is_floating_point:
            t.fill_(float("nan"))
        else:
            t.fill_(POISON_INT8 if dtype == torch.int8 else torch.iinfo(dtype).min)
        bufs.append(t)
    del bufs


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64; inf if a has a NaN."""
    a, b = a.double(), b.double()
    if torch.isnan(a).any():
        return float("inf")
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def codes_check(codes: torch.Tensor, ref: torch.Tensor) -> dict:
    """Codes against the reference: the fraction that differ, and by how much at most."""
    diff = (codes.int() - ref.int()).abs()
    return {
        "poison_left": int((codes == POISON_INT8).sum()) if ref.min() > POISON_INT8 else 0,
        "mismatch_fraction": float((diff > 0).float().mean()),
        "max_abs_diff": int(diff.max()) if diff.numel() else 0,
    }


def codes_ok(c: dict) -> bool:
    """Codes may differ by one where a float sum's order moved a value across a rounding boundary."""
    return c["poison_left"] == 0 and c["mismatch_fraction"] <= 1e-4 and c["max_abs_diff"] <= 1


class Report:
    """Records, written to JSON after each one, and the ceilings the floors are computed from."""

    def __init__(self, out: Path, header: dict) -> None:
        self.out, self.header, self.rows = out, header, []
        self.ceilings: dict[str, float] = {}

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.write()
        t = row.get("time_ms")
        print(
            f"{row['kernel']:34s} {row.get('shape', '')!s:22s} {t if t is None else round(t, 4)} ms",
            flush=True,
        )

    def floors(self) -> None:
        """Fill each row's floor from the final ceilings."""
        bw = self.ceilings.get("copy_bytes_s")
        for row in self.rows:
            if row["kernel"].startswith("ceiling") or not row.get("time_ms"):
                continue
            terms = {}
            if bw and row.get("bytes"):
                terms["bytes"] = row["bytes"] / bw
            rate = self.ceilings.get(
                {"int8": "int8_ops_s", "bf16": "bf16_flops_s"}.get(row.get("unit", ""), "")
            )
            if rate and row.get("ops"):
                terms["ops"] = row["ops"] / rate
            if terms:
                bound = max(terms, key=terms.get)
                row["floor_ms"], row["floor_bound"] = terms[bound] * 1e3, bound
                row["time_over_floor"] = row["time_ms"] / row["floor_ms"]

    def write(self) -> None:
        report = self.header | {"ceilings": self.ceilings, "rows": self.rows}
        self.out.write_text(json.dumps(report, indent=1))


def measure_ceilings(report: Report, tokens: int) -> None:
    """Device copy bandwidth and cuBLAS bf16 / int8 GEMM rates at the layer shapes (and 8192^3)."""
    src = torch.randn(256 * 2**20 if DEVICE == "cuda" else 2**20, device=DEVICE)  # 1 GiB
    dst = torch.empty_like(src)
    t = bench(lambda src=src, dst=dst: dst.copy_(src))
    report.ceilings["copy_bytes_s"] = 2 * src.nbytes / (t * 1e-3)
    report.add(
        {"kernel": "ceiling: device copy", "shape": (src.numel(),), "time_ms": t, "bytes": 2 * src.nbytes}
    )
    del src, dst
    shapes = [(tokens, n, k) for _, n, k in LAYERS] + ([(8192, 8192, 8192)] if DEVICE == "cuda" else [])
    best = {"bf16": 0.0, "int8": 0.0}
    for m, n, k in shapes:
        a, b = (
            torch.randn(m, k, device=DEVICE, dtype=torch.bfloat16),
            torch.randn(n, k, device=DEVICE).bfloat16(),
        )
        t = bench(lambda a=a, b=b: a @ b.t())
        best["bf16"] = max(best["bf16"], 2 * m * n * k / (t * 1e-3))
        report.add(
            {"kernel": "ceiling: cuBLAS bf16 mm", "shape": (m, n, k), "time_ms": t, "ops": 2 * m * n * k}
        )
        ai = torch.randint(-128, 128, (m, k), device=DEVICE, dtype=torch.int8)
        bi = torch.randint(-128, 128, (n, k), device=DEVICE, dtype=torch.int8)
        t = bench(lambda ai=ai, bi=bi: torch._int_mm(ai, bi.t()))
        best["int8"] = max(best["int8"], 2 * m * n * k / (t * 1e-3))
        report.add(
            {"kernel": "ceiling: cuBLAS int8 _int_mm", "shape": (m, n, k), "time_ms": t, "ops": 2 * m * n * k}
        )
    report.ceilings["bf16_flops_s"] = best["bf16"]
    report.ceilings["cublas_int8_ops_s"] = best["int8"]
    report.ceilings["int8_ops_s"] = best["int8"]  # raised below if the Triton GEMM goes faster


def bench_actquant(report: Report, tokens: int) -> None:
    """Fused RMSNorm + int8 quantization (forward, backward) and the row dequantizer."""
    from bittern.kernels import actquant

    for k, dtype in [(2048, torch.float32), (2048, torch.bfloat16), (5632, torch.bfloat16)]:
        x = (torch.randn(tokens, k, device=DEVICE) * torch.rand(tokens, 1, device=DEVICE) * 4).to(dtype)
        w = torch.rand(k, device=DEVICE) + 0.5
        poison(((tokens, k), torch.int8), ((tokens,), torch.float32), ((tokens,), torch.float32))
        codes, scale, rstd = actquant.rmsnorm_quant(x, w, 1e-5)
        ref_codes, ref_scale, ref_rstd = actquant.rmsnorm_quant_reference(x, w, 1e-5)
        check = codes_check(codes, ref_codes) | {
            "scale_rel": rel(scale, ref_scale),
            "rstd_rel": rel(rstd, ref_rstd),
        }
        ok = codes_ok(check) and check["scale_rel"] < 1e-5 and check["rstd_rel"] < 1e-5
        t = bench(lambda x=x, w=w: actquant.rmsnorm_quant(x, w, 1e-5))
        nbytes = tokens * k * (x.element_size() + 1) + 8 * tokens + 4 * k
        report.add(
            dict(
                kernel=f"rmsnorm_quant ({str(dtype)[6:]} x)",
                shape=(tokens, k),
                time_ms=t,
                bytes=nbytes,
                check=check,
                ok=ok,
            )
        )

        grad = torch.randn(tokens, k, device=DEVICE, dtype=torch.bfloat16)
        poison(((tokens, k), dtype))
        dx, dw = actquant.rmsnorm_quant_backward(grad, x, w, rstd)
        ref_dx, ref_dw = actquant.rmsnorm_quant_backward_reference(grad, x, w, 1e-5)
        check = {"dx_rel": rel(dx, ref_dx), "dweight_rel": rel(dw, ref_dw)}
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        t = bench(lambda g=grad, x=x, w=w, r=rstd: actquant.rmsnorm_quant_backward(g, x, w, r))
        nbytes = tokens * k * (2 + 2 * x.element_size()) + 4 * tokens + 4 * k
        report.add(
            dict(
                kernel=f"rmsnorm_quant_backward ({str(dtype)[6:]} x)",
                shape=(tokens, k),
                time_ms=t,
                bytes=nbytes,
                check=check,
                ok=check["dx_rel"] < tol and check["dweight_rel"] < 1e-4,
            )
        )

        poison(((tokens, k), torch.bfloat16))
        out = actquant.dequantize_rows(codes, scale, torch.bfloat16)
        ref = actquant.dequantize_rows_reference(codes, scale, torch.bfloat16)
        check = {"rel": rel(out, ref), "exact": bool(torch.equal(out, ref))}
        t = bench(lambda c=codes, s=scale: actquant.dequantize_rows(c, s, torch.bfloat16))
        report.add(
            dict(
                kernel="dequantize_rows (-> bf16)",
                shape=(tokens, k),
                time_ms=t,
                bytes=tokens * k * 3 + 4 * tokens,
                check=check,
                ok=check["exact"],
            )
        )


def bench_weightquant(report: Report) -> None:
    """Ternarization (per tensor; one per-channel case) and the weight dequantizer."""
    from bittern.kernels import weightquant

    cases = [(n, k, False) for _, n, k in LAYERS] + [(LAYERS[2][1], LAYERS[2][2], True)]
    for n, k, per_channel in cases:
        w = torch.randn(n, k, device=DEVICE) * 0.02 * (torch.rand(n, 1, device=DEVICE) + 0.5)
        poison(((n, k), torch.int8), ((n if per_channel else 1,), torch.float32))
        codes, gamma = weightquant.ternarize_weight(w, 1.0, per_channel)
        ref_codes, ref_gamma = weightquant.ternarize_reference(w, 1.0, per_channel)
        check = codes_check(codes, ref_codes) | {"gamma_rel": rel(gamma, ref_gamma)}
        t = bench(lambda w=w, pc=per_channel: weightquant.ternarize_weight(w, 1.0, pc))
        name = "ternarize (per channel)" if per_channel else "ternarize (per tensor)"
        report.add(
            dict(
                kernel=name,
                shape=(n, k),
                time_ms=t,
                bytes=n * k * 5,
                check=check,
                ok=codes_ok(check) and check["gamma_rel"] < 1e-5,
                note="two passes over W by design (device reduction, no host sync): 9 B/elem moved",
            )
        )
        if per_channel:
            continue
        poison(((n, k), torch.bfloat16))
        out = weightquant.dequantize_weight(codes, gamma, torch.bfloat16)
        ref = weightquant.dequantize_weight_reference(codes, gamma, torch.bfloat16)
        t = bench(lambda c=codes, g=gamma: weightquant.dequantize_weight(c, g, torch.bfloat16))
        report.add(
            dict(
                kernel="dequantize_weight (-> bf16)",
                shape=(n, k),
                time_ms=t,
                bytes=n * k * 3,
                check={"exact": bool(torch.equal(out, ref))},
                ok=bool(torch.equal(out, ref)),
            )
        )


def bench_int8_mm(report: Report, tokens: int) -> None:
    """The forward int8 GEMM: exactness, the autotuner's time for each tile config, its choice."""
    from bittern.kernels import int8_mm as module

    tuner = module._int8_mm_autotuned
    for name, n, k in LAYERS:
        m = tokens
        a = torch.randint(-127, 128, (m, k), device=DEVICE, dtype=torch.int8)
        b = torch.randint(-1, 2, (n, k), device=DEVICE, dtype=torch.int8)
        s_x = torch.rand(m, device=DEVICE) * 100 + 1
        gamma = torch.rand(1, device=DEVICE) * 0.02
        exact = torch._int_mm(a, b.t())
        ref = (exact.float() * gamma / s_x[:, None]).to(torch.bfloat16)
        args = (a, b, s_x, gamma, torch.bfloat16)
        module.int8_mm(*args)  # autotunes this shape (each config timed, the best kept)
        timings = getattr(tuner, "configs_timings", None) or {}
        best = tuner.best_config if DEVICE == "cuda" else None
        tile = None
        if best is not None:
            kw = best.kwargs
            tile = (kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], best.num_warps, best.num_stages)
        poison(((m, n), torch.bfloat16))
        out = module.int8_mm(*args)
        poison(((m, n), torch.int32))
        acc = module.int8_mm(a, b, config=tile)  # the same tile, unscaled: int32 must be exact
        check = {"int32_exact": bool(torch.equal(acc, exact)), "scaled_rel": rel(out, ref)}
        common = dict(
            shape=(m, n, k), ops=2 * m * n * k, bytes=m * k + n * k + 2 * m * n + 4 * m, unit="int8"
        )
        t = bench(lambda args=args: module.int8_mm(*args))
        tiles = [
            {
                "tile": (
                    c.kwargs["BLOCK_M"],
                    c.kwargs["BLOCK_N"],
                    c.kwargs["BLOCK_K"],
                    c.num_warps,
                    c.num_stages,
                ),
                "median_ms": v[0] if isinstance(v, list | tuple) else v,
            }
            for c, v in timings.items()
        ]
        ok = check["int32_exact"] and check["scaled_rel"] < 5e-3
        report.add(
            dict(
                kernel=f"int8_mm autotuned [{name}]",
                time_ms=t,
                check=check,
                ok=ok,
                best_tile=tile,
                autotune=tiles,
                **common,
            )
        )
        report.ceilings["int8_ops_s"] = max(report.ceilings.get("int8_ops_s", 0), common["ops"] / (t * 1e-3))
        for entry in tiles:
            report.add(dict(kernel=f"int8_mm tile {entry['tile']}", time_ms=entry["median_ms"], **common))


def bench_backward(report: Report, tokens: int) -> None:
    """grad_input and grad_weight ops, 16-bit and int8, against references built from the references."""
    import bittern.kernels.ops  # noqa: F401
    from bittern.kernels import gradquant, weightquant
    from bittern.kernels.actquant import dequantize_rows_reference, rmsnorm_quant_reference

    ops = torch.ops.bittern
    for name, n, k in LAYERS:
        m = tokens
        w = torch.randn(n, k, device=DEVICE) * 0.02
        grad = torch.randn(m, n, device=DEVICE, dtype=torch.bfloat16) * 1e-3
        codes, gamma = weightquant.ternarize_reference(w, 1.0, False)
        w_deq = weightquant.dequantize_weight_reference(codes, gamma, torch.bfloat16)
        exact = grad.float() @ w_deq.float()
        for int8 in (False, True):
            poison(((m, k), torch.bfloat16))
            out = ops.ternary_linear_grad_input(grad, w, 1.0, False, int8)
            if int8:  # the same quantized operands through the references
                gq, sg = gradquant.quantize_grad_rows_reference(grad, gamma)
                ref = torch._int_mm(gq, codes.t().contiguous().t()).float() / sg[:, None]
            else:
                ref = grad @ w_deq
            check = {"rel_to_reference": rel(out, ref), "rel_to_exact_gradient": rel(out, exact)}
            t = bench(lambda g=grad, w=w, i=int8: ops.ternary_linear_grad_input(g, w, 1.0, False, i))
            nbytes = m * n * 2 + n * k * (1 if int8 else 3) + m * k * 2 + (m * n * 3 if int8 else 0)
            report.add(
                dict(
                    kernel=f"grad_input {'int8' if int8 else 'bf16'} [{name}]",
                    shape=(m, n, k),
                    time_ms=t,
                    ops=2 * m * n * k,
                    bytes=nbytes,
                    unit="int8" if int8 else "bf16",
                    check=check,
                    ok=check["rel_to_reference"] < 1e-2,
                )
            )

        x = torch.randn(m, k, device=DEVICE) * torch.rand(m, 1, device=DEVICE)
        x_codes, x_scale, _ = rmsnorm_quant_reference(x, None, 1e-5)
        x_deq = dequantize_rows_reference(x_codes, x_scale, torch.bfloat16)
        exact = grad.float().t() @ x_deq.float()
        for int8 in (False, True):
            poison(((n, k), torch.float32))
            out = ops.ternary_linear_grad_weight(grad, x_codes, x_scale, int8, torch.float32)
            if int8:
                gq_t, sg = gradquant.quantize_grad_cols_reference(grad, x_scale)
                ref = torch._int_mm(gq_t, x_codes.t().contiguous().t()).float() / sg[:, None]
            else:
                ref = (grad.t() @ x_deq).float()
            check = {"rel_to_reference": rel(out, ref), "rel_to_exact_gradient": rel(out, exact)}
            t = bench(
                lambda g=grad, c=x_codes, s=x_scale, i=int8: ops.ternary_linear_grad_weight(
                    g, c, s, i, torch.float32
                )
            )
            nbytes = m * n * 2 + m * k + n * k * 4 + (m * n * 3 + m * k * 2 if int8 else m * k * 4)
            report.add(
                dict(
                    kernel=f"grad_weight {'int8' if int8 else 'bf16'} [{name}]",
                    shape=(n, k, m),
                    time_ms=t,
                    ops=2 * m * n * k,
                    bytes=nbytes,
                    unit="int8" if int8 else "bf16",
                    check=check,
                    ok=check["rel_to_reference"] < 1e-2,
                )
            )


def bench_layers(report: Report, tokens: int) -> None:
    """Forward + backward of one layer: nn.Linear (bf16 autocast), reference BitLinear, fused BitLinear."""
    from bittern.nn import BitLinear, KernelOptions, configure_fast_path

    for name, n, k in LAYERS:
        x = torch.randn(tokens, k, device=DEVICE, requires_grad=True)
        grad = torch.randn(tokens, n, device=DEVICE, dtype=torch.bfloat16)
        torch.manual_seed(0)
        linear = torch.nn.Linear(k, n, bias=False, device=DEVICE)
        bit = BitLinear(k, n, device=DEVICE)
        with torch.no_grad():
            bit.weight.copy_(linear.weight)
            bit.norm.weight.uniform_(0.5, 1.5)
        variants = [
            ("nn.Linear bf16", linear, None),
            ("BitLinear reference", bit, False),
            ("BitLinear fused", bit, True),
        ]
        results = {}
        for variant, module, enabled in variants:
            if enabled is not None:  # --device cpu: the fused path on CPU tensors (interpreted)
                configure_fast_path(bit, KernelOptions(enabled=enabled, devices=("cuda", DEVICE)))

            def step(module=module, x=x, grad=grad):
                with torch.autocast(DEVICE, dtype=torch.bfloat16):
                    y = module(x)
                y.backward(grad)
                return y

            x.grad = None
            module.zero_grad(set_to_none=True)
            y = step().detach()
            results[variant] = [y, x.grad.clone(), *(p.grad.clone() for p in module.parameters())]
            t_fwd = bench(lambda module=module, x=x: _forward(module, x))
            t = bench(step)
            row = dict(kernel=f"layer fwd+bwd: {variant} [{name}]", shape=(tokens, n, k), time_ms=t)
            report.add(row | dict(forward_ms=t_fwd, ops=6 * tokens * n * k, unit="bf16"))
        names = ["y", "dx", "dweight", "dnorm"]
        fused, ref = results["BitLinear fused"], results["BitLinear reference"]
        check = {f"{what}_rel": rel(a, b) for what, a, b in zip(names, fused, ref, strict=True)}
        report.rows[-1] |= {"check": check, "ok": all(v < 2e-2 for v in check.values())}


def _forward(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        return module(x)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="kernel_bench.json")
    p.add_argument("--tokens", type=int, default=4 * 2048, help="M: tokens per micro-batch")
    p.add_argument("--sections", default="actquant,weightquant,int8_mm,backward,layers")
    p.add_argument("--device", default="cuda", help="cpu: a smoke test of this script (TRITON_INTERPRET=1)")
    p.add_argument("--shrink", type=int, default=1, help="divide the layer dimensions by this (smoke tests)")
    args = p.parse_args()
    global DEVICE, LAYERS
    DEVICE = args.device
    LAYERS = [(name, n // args.shrink, k // args.shrink) for name, n, k in LAYERS]
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("kernel_bench needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    header = {
        "device": name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "tokens": args.tokens,
        "datasheet": next((v for key, v in DATASHEET.items() if key in name), None),
    }
    report = Report(Path(args.out), header)
    start = time.perf_counter()
    measure_ceilings(report, args.tokens)
    sections = {
        "actquant": bench_actquant,
        "weightquant": bench_weightquant,
        "int8_mm": bench_int8_mm,
        "backward": bench_backward,
        "layers": bench_layers,
    }
    for section in args.sections.split(","):
        try:
            fn = sections[section]
            fn(report) if section == "weightquant" else fn(report, args.tokens)
        except Exception as e:  # keep the other sections' numbers
            traceback.print_exc()
            report.add({"kernel": f"section {section}", "error": repr(e)[:500]})
    report.floors()
    report.header["wall_s"] = time.perf_counter() - start
    report.write()
    _print_table(report)
    failed = [r["kernel"] for r in report.rows if r.get("ok") is False or "error" in r]
    print(f"checks failed: {failed}" if failed else "all checks passed")
    return 1 if failed else 0


def _print_table(report: Report) -> None:
    c = {k: v / 1e12 for k, v in report.ceilings.items()}
    print(
        f"\nceilings: copy {c.get('copy_bytes_s', 0):.2f} TB/s, bf16 {c.get('bf16_flops_s', 0):.0f} TFLOP/s, "
        f"int8 {c.get('int8_ops_s', 0):.0f} TOP/s (cuBLAS {c.get('cublas_int8_ops_s', 0):.0f})"
    )
    print(f"{'kernel':44s} {'shape':22s} {'ms':>8s} {'floor':>8s} {'x floor':>7s} {'rate':>12s}  ok")
    for r in report.rows:
        if r["kernel"].startswith("ceiling") or "time_ms" not in r:
            if "error" in r:
                print(f"{r['kernel']:44s} ERROR {r['error'][:80]}")
            continue
        t = r["time_ms"]
        if r.get("ops"):
            rate = f"{r['ops'] / (t * 1e-3) / 1e12:7.0f} T/s"
        elif r.get("bytes"):
            rate = f"{r['bytes'] / (t * 1e-3) / 1e12:7.2f} TB/s"
        else:
            rate = ""
        floor = "" if r.get("floor_ms") is None else f"{r['floor_ms']:.4f}"
        over = r.get("time_over_floor", 0)
        shape = str(tuple(r.get("shape", ())))
        ok = r.get("ok", "")
        print(f"{r['kernel'][:44]:44s} {shape:22s} {t:8.4f} {floor:>8s} {over:7.2f} {rate:>12s}  {ok}")


if __name__ == "__main__":
    sys.exit(main())
