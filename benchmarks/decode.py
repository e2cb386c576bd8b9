"""Decoding speed: packed ternary weights vs the bf16 twin through the same compiled decode, and the peer.

For each shape (bittern presets 125m / 1b / 2b, random init: speed does not depend on the values)
and batch (1, 8): a prompt of --prompt tokens, then --new greedy tokens.

- packed: the ternary model frozen to TernaryLinear and packed 2 bits per weight
  (`bittern.inference.prepare_for_decoding`), bfloat16 elsewhere, `StaticDecoder` with its step
  compiled in CUDA graphs (`torch.compile(mode="reduce-overhead")`);
- bf16: the full-precision twin (nn.Linear) in bfloat16 through the same compiled decoder;
- hf: transformers' `generate` (eager, its default cache) on bittern's transformers export of the
  ternary model, bfloat16: the peer.

Per variant: time to first token (prefill eager, prompt upload included), decode tokens/s (all rows,
steps after the first), GPU memory of the weights (parameters and buffers; the packed blocks'
linear layers apart), and for the first case a profile of the compiled step (GPU kernel time per
token against wall time per token: what bounds it). Variants run in priority order, 1b first, and
stop starting new ones when --deadline seconds have passed. Without a GPU it runs the tiny preset
eagerly, unpacked (a smoke test). JSON out.

    PYTHONPATH=. python benchmarks/decode.py --out decode.json --deadline 420
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bittern.inference import StaticDecoder, generate, prepare_for_decoding  # noqa: E402
from bittern.models import ModelConfig, build_model  # noqa: E402
from bittern.nn.ternary_linear import TernaryLinear  # noqa: E402

VARIANTS = ("packed", "bf16", "hf")


def weight_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of parameters and buffers (each storage once: a fused group's members hold views of
    its words): all, and the blocks' linear layers' (their groups included)."""
    linear_types = ("PackedTernaryLinear", "PackedTernaryGroup")
    seen, total, linear = set(), 0, 0
    for name, module in model.named_modules():
        is_linear = name.startswith("layers.") and (
            isinstance(module, torch.nn.Linear | TernaryLinear) or type(module).__name__ in linear_types
        )
        own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        for _, t in own:
            storage = t.untyped_storage()
            if storage.data_ptr() in seen:
                continue
            seen.add(storage.data_ptr())
            size = storage.nbytes()
            total += size
            linear += size if is_linear else 0
    return {"total": total, "block_linears": linear}


def build(shape: str, quant: str, vocab: int, device: torch.device):
    cfg = ModelConfig(preset=shape, quant=quant, vocab_size=vocab).resolved()
    with torch.device(device):
        return build_model(cfg).eval()


def prompts(batch: int, length: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (batch, length), generator=g).tolist()


def time_decoder(model, batch: int, args, device: torch.device, profile: bool) -> dict:
    compile = device.type == "cuda" and not args.no_compile
    dec = StaticDecoder(model, batch, args.prompt + args.new)
    if compile:
        dec.compile()
    ids = prompts(batch, args.prompt, model.config.vocab_size)
    start = time.perf_counter()
    generate(dec, ids, min(args.new, 16))  # compiles, records the CUDA graphs
    warm_s = time.perf_counter() - start
    runs = [generate(dec, ids, args.new) for _ in range(args.repeats)]
    best = max(runs, key=lambda r: r.decode_tokens_per_s)
    out = {
        "compiled": compile,
        "warmup_s": warm_s,
        "time_to_first_token_ms": min(r.time_to_first_token_s for r in runs) * 1e3,
        "decode_tokens_per_s": best.decode_tokens_per_s,
        "ms_per_step": best.decode_s / max(best.steps - 1, 1) * 1e3,
        "tokens": best.tokens[0][:8],
    }
    if profile and device.type == "cuda":
        out["profile"] = profile_steps(dec, ids)
    return out


def profile_steps(dec: StaticDecoder, ids: list[list[int]], steps: int = 32) -> dict:
    """GPU kernel time per decode step against its wall time (what bounds the step)."""
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.common import profile_summary

    B = len(ids)
    tok = torch.zeros(B, dtype=torch.long, device="cuda")
    pos = torch.full((B,), len(ids[0]), dtype=torch.long, device="cuda")
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            tok, _ = dec.run_step(tok, pos)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / steps
    gpu_ms, kernels, _ = profile_summary(prof, steps, "step", 12, 0, 80)
    return {"wall_ms_per_step": wall * 1e3, "gpu_kernel_ms_per_step": gpu_ms, "top_kernels": kernels}


def hf_peer(ternary_model, batch: int, args, device: torch.device) -> dict:
    """transformers' generate on bittern's HF export of the (random) ternary model, bfloat16."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from bittern.export.hf import check_exportable, hf_config, hf_state_dict
    from bittern.nn import bitlinear_layers

    cfg = ternary_model.config
    check_exportable(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        hf_config(cfg, None, [n for n, _ in bitlinear_layers(ternary_model)]).save_pretrained(tmp)
        save_file(hf_state_dict(ternary_model), f"{tmp}/model.safetensors", metadata={"format": "pt"})
        model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.bfloat16).to(device).eval()
    ids = torch.tensor(prompts(batch, args.prompt, cfg.vocab_size), device=device)

    def run(n: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(4)  # warm-up
    first, full = run(1), run(args.new)
    return {
        "time_to_first_token_ms": first * 1e3,
        "decode_tokens_per_s": batch * (args.new - 1) / max(full - first, 1e-9),
        "weight_bytes": weight_bytes(model)["total"],
    }


def run_variant(variant: str, shape: str, batch: int, args, device, profile: bool) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if variant == "hf":
        return hf_peer(build(shape, "ternary", args.vocab, device), batch, args, device)
    quant = "ternary" if variant == "packed" else "none"
    model = prepare_for_decoding(
        build(shape, quant, args.vocab, device),
        device,
        fuse_shared=not args.no_fuse,
        variant=args.packed_variant,
    )
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    packed = sum(type(m).__name__ == "PackedTernaryLinear" for m in model.modules())
    result = {"packed_layers": packed, "weight_bytes": weight_bytes(model)}
    if device.type == "cuda":
        result["gpu_allocated_bytes"] = torch.cuda.memory_allocated()
    result |= time_decoder(model, batch, args, device, profile)
    if device.type == "cuda":
        result["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
    return result


def ratios(rows: list[dict]) -> list[dict]:
    """Per (shape, batch): packed over bf16 speed, bf16 over packed weight memory, packed over hf."""
    by = {(r["shape"], r["batch"], r["variant"]): r for r in rows if "error" not in r}
    out = []
    for shape, batch in sorted({(r["shape"], r["batch"]) for r in rows}):
        p, b, h = (by.get((shape, batch, v)) for v in VARIANTS)
        entry = {"shape": shape, "batch": batch}
        if p and b:
            entry["packed_over_bf16_tokens_per_s"] = p["decode_tokens_per_s"] / b["decode_tokens_per_s"]
            entry["bf16_over_packed_weight_bytes"] = b["weight_bytes"]["total"] / p["weight_bytes"]["total"]
            entry["bf16_over_packed_block_linear_bytes"] = (
                b["weight_bytes"]["block_linears"] / p["weight_bytes"]["block_linears"]
            )
        if p and h:
            entry["packed_over_hf_tokens_per_s"] = p["decode_tokens_per_s"] / h["decode_tokens_per_s"]
        out.append(entry)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--shapes", nargs="+", help="presets (default: 1b 125m 2b on CUDA, tiny on CPU)")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--prompt", type=int, help="prompt tokens (default 128; 16 on CPU)")
    p.add_argument("--new", type=int, help="new tokens (default 256; 16 on CPU)")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--deadline", type=float, default=420.0, help="seconds after which no new variant starts")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument(
        "--packed-variant",
        default="auto",
        help="packed kernel variant: auto, fused, gemv, dot, fused-int, gemv-int (ternary_gemv.VARIANTS)",
    )
    p.add_argument("--no-fuse", action="store_true", help="packed q/k/v and gate/up run layer by layer")
    args = p.parse_args()
    begin = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    shapes = args.shapes or (["1b", "125m", "2b"] if cuda else ["tiny"])
    args.prompt = args.prompt or (128 if cuda else 16)
    args.new = args.new or (256 if cuda else 8)
    if not cuda:
        args.vocab = min(args.vocab, 512)
    report = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "prompt": args.prompt,
        "new_tokens": args.new,
        "vocab": args.vocab,
        "packed_variant": args.packed_variant,
        "fused_groups": not args.no_fuse,
        "rows": [],
        "skipped": [],
    }
    first = True
    for shape in shapes:
        for batch in args.batches:
            for variant in args.variants:
                where = {"shape": shape, "batch": batch, "variant": variant}
                if time.perf_counter() - begin > args.deadline:
                    report["skipped"].append(where)
                    continue
                try:
                    row = where | run_variant(variant, shape, batch, args, device, first and variant != "hf")
                except Exception as e:  # one failing variant must not lose the others' figures
                    row = where | {
                        "error": f"{type(e).__name__}: {e}"[:2000],
                        "trace": traceback.format_exc()[-3000:],
                    }
                row["elapsed_s"] = time.perf_counter() - begin
                report["rows"].append(row)
                print(json.dumps({k: v for k, v in row.items() if k not in ("trace", "profile")}), flush=True)
                torch._dynamo.reset()
                gc.collect()
                Path(args.out).write_text(json.dumps(report | {"ratios": ratios(report["rows"])}, indent=1))
            first = False
    report["ratios"] = ratios(report["rows"])
    report["wall_s"] = time.perf_counter() - begin
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report["ratios"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
