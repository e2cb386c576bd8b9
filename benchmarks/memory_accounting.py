"""Where the fused path's training memory goes, against the bf16 twin, counted on the CPU.

Three counts per preset, for the twin (`model.quant = none`) and the fused path (BitLinear on the
Triton kernels, run on CPU tensors by Triton's interpreter: set TRITON_INTERPRET=1):

- persistent: bytes the model holds beyond its parameters between steps (the ternary codes,
  gamma, a transposed copy of the codes);
- eager: bytes saved for backward by one forward under bf16 autocast, caught with
  `torch.autograd.graph.saved_tensors_hooks` and deduplicated by storage; parameters, buffers
  and the layers' codes are not counted (they are held anyway), 16-bit copies of weights
  (autocast's casts) are a category of their own;
- compiled: the tensors one decoder block compiled on its own (as the benchmark compiles it)
  saves for backward, read off the backward graph that AOTAutograd's min-cut partitioner (the
  one Inductor uses) makes: what a compiled step keeps per block. No Inductor code is run.

Bytes saved grow with the number of tokens (flash attention's saves too), so the counts are
taken at the preset's shapes on a few tokens, one block, and scaled to `--tokens` tokens and
the preset's blocks. `analytic_bitlinear_saved` counts what the fused BitLinear functions
save from shapes alone (the test holds it to the hook count).

    TRITON_INTERPRET=1 PYTHONPATH=. python benchmarks/memory_accounting.py --presets 125m,1b --out m.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

GiB = 1024**3
CODE_ATTRS = (("codes", "ternary_codes"), ("gamma", "ternary_gamma"), ("codes_t", "ternary_codes_t"))
CATEGORIES = ("float32", "bfloat16", "int8", "other", "16-bit weight copies")


def _dtype_category(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    return name if name in ("float32", "bfloat16", "int8") else "other"


def persistent_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes held between steps beyond the parameters: the fast path's codes, by kind."""
    out = {"codes": 0, "gamma": 0, "codes_t": 0}
    for m in model.modules():
        for key, attr in CODE_ATTRS:
            t = getattr(m, attr, None)
            if isinstance(t, torch.Tensor):
                out[key] += t.untyped_storage().nbytes()
    return out


def held_storages(model: nn.Module) -> set[int]:
    """Storage addresses of what the model holds anyway: parameters, buffers, codes."""
    tensors = [*model.parameters(), *model.buffers()]
    for m in model.modules():
        tensors += [getattr(m, a, None) for _, a in CODE_ATTRS]
    return {t.untyped_storage().data_ptr() for t in tensors if isinstance(t, torch.Tensor)}


def saved_for_backward(
    fn: Callable[[], object], held: Iterable[int] = (), weight_shapes: Iterable[tuple] = ()
) -> tuple[object, dict[str, int]]:
    """(fn(), bytes saved for backward by category): each storage once, `held` ones not at all.

    A saved 16-bit tensor of a weight's shape (an autocast cast of a weight) counts as a
    weight copy, not an activation.
    """
    held, shapes = set(held), set(weight_shapes)
    seen: dict[int, tuple[int, str]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in held and ptr not in seen:
            copy = t.dtype in (torch.bfloat16, torch.float16) and tuple(t.shape) in shapes
            seen[ptr] = (storage.nbytes(), "16-bit weight copies" if copy else _dtype_category(t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    counts = dict.fromkeys(CATEGORIES, 0)
    for nbytes, category in seen.values():
        counts[category] += nbytes
    return out, counts


def analytic_bitlinear_saved(
    tokens: int, in_features: int, layers: int, x_bytes: int, norm: bool, recompute_codes: bool
) -> int:
    """Bytes the fused BitLinear function(s) of `layers` layers reading one (tokens, in) x save for
    backward, from shapes (weights' codes and gamma aside: the layers hold them)."""
    rstd, scale = 4 * tokens, 4 * tokens
    codes = tokens * in_features  # int8
    if not norm:
        return layers * (codes + scale) + rstd
    kept = 0 if recompute_codes else layers * (codes + scale)
    return tokens * in_features * x_bytes + rstd + kept


# ---- the models ----------------------------------------------------------------------------


def build(preset: str, quant: str, seq: int, n_layers: int, options=None, vocab: int = 512):
    from bittern.models import ModelConfig, build_model
    from bittern.nn import KernelOptions, configure_fast_path

    torch.manual_seed(0)
    cfg = ModelConfig(preset=preset, quant=quant, vocab_size=vocab, max_seq_len=seq, n_layers=n_layers)
    model = build_model(cfg.resolved())
    if quant == "ternary":
        opts = replace(options or KernelOptions(), devices=("cuda", "cpu"))
        assert configure_fast_path(model, opts) > 0, "the fused path needs TRITON_INTERPRET=1 on the CPU"
    return model


def _loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(tokens)
    return F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())


def eager_count(model: nn.Module, tokens: torch.Tensor) -> dict[str, int]:
    """Bytes saved for backward by one eager forward (the codes made first, so they are held)."""
    with torch.no_grad():
        _loss(model, tokens[:, :8])  # makes the codes
    shapes = [tuple(p.shape) for p in model.parameters()]
    _, counts = saved_for_backward(lambda: _loss(model, tokens), held_storages(model), shapes)
    return counts


def compiled_block_count(model: nn.Module, tokens: torch.Tensor) -> dict[str, int]:
    """Bytes that block 0, compiled on its own, saves for backward (min-cut partitioner's choice).

    Only token-shaped saves count (first dimension the batch or the token count): the block's
    parameters are held anyway.
    """
    from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd

    B, T = tokens.shape
    graphs = []

    def partition(joint, inputs, **kwargs):
        fw, bw = min_cut_rematerialization_partition(joint, inputs, **kwargs)
        graphs.append(bw)
        return fw, bw

    def boxed(gm, _inputs):
        return make_boxed_func(gm.forward)

    backend = aot_autograd(fw_compiler=boxed, bw_compiler=boxed, partition_fn=partition)
    torch._dynamo.reset()
    with torch.no_grad():
        _loss(model, tokens[:, :8])  # makes the codes, probes the kernels eagerly
    block = model.layers[0]
    block.compile(backend=backend, fullgraph=True, dynamic=False)
    try:
        _loss(model, tokens)
    finally:
        block._compiled_call_impl = None
        torch._dynamo.reset()
    assert graphs, "the block did not compile"
    counts = dict.fromkeys(CATEGORIES, 0)
    for node in graphs[-1].graph.nodes:
        val = node.meta.get("val")
        if node.op != "placeholder" or node.name.startswith("tangents") or not isinstance(val, torch.Tensor):
            continue
        if val.dim() and val.shape[0] in (B, B * T):
            counts[_dtype_category(val.dtype)] += val.numel() * val.element_size()
    return counts


# ---- the report ----------------------------------------------------------------------------


def account(preset: str, variants: dict, batch: int, seq: int, target_tokens: int, compiled: bool) -> dict:
    """Per variant: persistent bytes and saved-for-backward bytes at `target_tokens`, all blocks."""
    from bittern.models import ModelConfig

    n_layers = ModelConfig(preset=preset, vocab_size=512).resolved().n_layers
    tokens = torch.randint(0, 512, (batch, seq), generator=torch.Generator().manual_seed(0))
    scale = target_tokens / (batch * seq)
    report = {"preset": preset, "blocks": n_layers, "tokens": target_tokens, "variants": {}}
    for name, (quant, options) in variants.items():
        # one block and two: their difference is one block's, the rest is the embedding and head's
        counts = []
        for layers in (1, 2):
            model = build(preset, quant, seq, layers, options)
            counts.append(eager_count(model, tokens))
        per_block = {k: (counts[1][k] - counts[0][k]) * scale for k in CATEGORIES}
        outside = {k: (counts[0][k] - per_block[k] / scale) * scale for k in CATEGORIES}
        model = build(preset, quant, seq, 1, options)
        with torch.no_grad():
            _loss(model, tokens[:, :8])
        persistent = {k: v * n_layers for k, v in persistent_bytes(model).items()}
        row = {
            "persistent": persistent,
            "eager_saved_per_block": per_block,
            "eager_saved_outside_blocks": outside,
            "eager_saved_total": sum(per_block.values()) * n_layers + sum(outside.values()),
        }
        if compiled:
            c = compiled_block_count(model, tokens)
            row["compiled_saved_per_block"] = {k: v * scale for k, v in c.items()}
            row["compiled_saved_blocks_total"] = sum(c.values()) * scale * n_layers
        row["persistent_total"] = sum(persistent.values())
        report["variants"][name] = row
        del model
    return report


def print_report(report: dict) -> None:
    gib = lambda b: f"{b / GiB:7.2f}"  # noqa: E731
    print(f"\n{report['preset']}: {report['blocks']} blocks, {report['tokens']} tokens per step (GiB)")
    head = f"{'variant':<22}{'persistent':>11}" + "".join(f"{c[:12]:>13}" for c in CATEGORIES)
    print(head + f"{'eager total':>13}{'compiled':>10}")
    for name, r in report["variants"].items():
        per = defaultdict(float)
        for k, v in r["eager_saved_per_block"].items():
            per[k] += v * report["blocks"]
        for k, v in r["eager_saved_outside_blocks"].items():
            per[k] += v
        cells = "".join(f"{gib(per[c]):>13}" for c in CATEGORIES)
        comp = gib(r["compiled_saved_blocks_total"]) if "compiled_saved_blocks_total" in r else "-"
        print(f"{name:<22}{gib(r['persistent_total']):>11}{cells}{gib(r['eager_saved_total']):>13}{comp:>10}")
        if "compiled_saved_per_block" in r:
            c = r["compiled_saved_per_block"]
            print(f"{'  compiled, per block':<33}" + "".join(f"{gib(c[k]):>13}" for k in CATEGORIES))


def main(argv=None) -> int:
    from bittern.nn import KernelOptions

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="125m,1b")
    p.add_argument("--batch", type=int, default=2, help="sequences counted (then scaled to --tokens)")
    p.add_argument("--seq", type=int, default=40)
    p.add_argument("--tokens", default="125m=16384,1b=8192", help="tokens per step to scale to, per preset")
    p.add_argument("--no-compiled", action="store_true", help="skip the compiled-block count")
    p.add_argument("--out", default="memory_accounting.json")
    args = p.parse_args(argv)
    targets = dict(item.split("=") for item in args.tokens.split(","))
    variants = {
        "twin": ("none", None),
        "fast (codes saved)": ("ternary", KernelOptions(recompute_codes=False)),
        "fast (codes remade)": ("ternary", KernelOptions(recompute_codes=True)),
    }
    reports = []
    for preset in args.presets.split(","):
        target = int(targets.get(preset, 8192))
        reports.append(account(preset, variants, args.batch, args.seq, target, not args.no_compiled))
        print_report(reports[-1])
        with open(args.out, "w") as f:
            json.dump(reports, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
