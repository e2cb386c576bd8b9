"""GPU self-check of the packed decode path: kernels at the 1B shapes, and greedy tokens end to end.

The checks run in this order, each written to the JSON as it ends (`benchmarks.common.run_checks`:
per check its status, seconds and result), so a time limit keeps what finished; `--budget`
starts nothing new past its seconds and records the rest as skipped:

0. greedy (3. below) first: the end-to-end check, the one the others serve;
1. `bittern.kernels.ternary_gemv` on CUDA against its PyTorch reference and against TernaryLinear
   (unpacked, eager) at the 1B preset's shapes, decode (1, 8 tokens) and prefill (128, 1024):
   without the inside norm the result must be bitwise the reference's; with it, the norm's
   float32 statistics may round differently, so the share of int8 codes that moved is reported
   and must stay tiny. Eager and compiled (the op inside torch.compile) must agree bitwise.
   Every kernel variant (`ternary_gemv.VARIANTS`: fused GEMV, GEMV after `_quant_kernel`, their
   forms without dp4a, the tensor-core dot) at 1 and 8 tokens against the reference the same way.
2. The fused groups (`PackedTernaryGroup`: q/k/v with three inside norms, gate/up with two) at
   1, 8 and 128 tokens: bitwise the members' own outputs, eager and compiled.
3. A small Llama trained for `--train-steps` (150) steps on a synthetic Markov corpus (so its
   greedy choices are confident: how often they follow the chain, `greedy_follows_chain`, and
   the smallest top-2 logit margin on the greedy path are reported), frozen to TernaryLinear:
   greedy tokens of the packed model through the compiled decoder (CUDA graphs) against
   TernaryLinear's eager decode of the same bfloat16 model, and against `bittern.generate.sample`
   on it (both must agree); the first divergence per row and the largest logit difference while
   the tokens agree. The packed model runs with its q/k/v and gate/up grouped
   (`bittern.inference.fuse`), as `prepare_for_decoding` leaves it.

JSON out; exit status 1 if a check fails, 3 if none failed but some were skipped.

    PYTHONPATH=. python benchmarks/decode_selfcheck.py --out decode_check.json --budget 240
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES_1B = ((2048, 2048), (2048, 256), (2048, 5632), (5632, 2048))  # (in, out): q/o, k/v, gate/up, down
TOKENS = (1, 8, 128, 1024)
CODE_FLIP_LIMIT = 1e-3  # share of outputs allowed to differ from the reference when the norm is fused
TRAIN_STEPS = 150  # the greedy check's model (300 before): most of its cost is the decoder's compile


def check_kernels(k: int, n: int) -> list[dict]:
    """The kernel on one (in, out) shape of the 1B preset, at every token count of TOKENS."""
    from bittern.kernels.ternary_gemv import ternary_linear, ternary_linear_reference
    from bittern.nn.ternary_linear import TernaryLinear

    rows = []
    g = torch.Generator(device="cuda").manual_seed(0 + k * 7 + n)
    torch._dynamo.config.cache_size_limit = 64  # one graph per shape checked, none falling back to eager

    @torch.compile(fullgraph=True, dynamic=False)
    @torch.no_grad()
    def compiled(*args):
        return ternary_linear(*args)

    layer = TernaryLinear(k, n, (), norm=True).cuda()
    layer.codes.copy_(torch.randint(-1, 2, (n, k), device="cuda", generator=g, dtype=torch.int8))
    layer.scale.fill_(0.0213)
    layer.norm.weight.data = (torch.rand(k, device="cuda", generator=g) + 0.5).bfloat16()
    packed = layer.to_packed()
    for m in TOKENS:
        x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
        for norm in (None, layer.norm.weight):
            got = ternary_linear(x, packed.words, packed.scale, norm, None, 1e-5)
            ref = ternary_linear_reference(x, packed.words, packed.scale, norm, None, 1e-5)
            # compiled once per kernel and shape (each is a compile): decode and prefill, norm fused
            again = (
                compiled(x, packed.words, packed.scale, norm, None, 1e-5)
                if norm is not None and m in (1, 128)
                else got
            )
            tl_out = layer(x) if norm is not None else None
            differ = (got != ref).float().mean().item()
            row = {
                "shape": [m, n, k],
                "norm": norm is not None,
                "share_differing_from_reference": differ,
                "max_abs_diff_reference": (got.float() - ref.float()).abs().max().item(),
                "compiled_equals_eager": torch.equal(got, again),
            }
            if tl_out is not None:
                row["max_rel_diff_ternary_linear"] = (
                    (got.float() - tl_out.float()).abs().max() / tl_out.float().abs().max()
                ).item()
            row["ok"] = row["compiled_equals_eager"] and (
                differ == 0 if norm is None else differ < CODE_FLIP_LIMIT
            )
            rows.append(row)
    return rows


def check_variants(k: int, n: int) -> list[dict]:
    """Each kernel variant against the reference on one (in, out) shape, decode token counts,
    with and without the inside norm."""
    from bittern.kernels.ternary_gemv import VARIANTS, pack_words, ternary_linear, ternary_linear_reference

    rows = []
    g = torch.Generator(device="cuda").manual_seed(1 + k * 7 + n)
    words = pack_words(torch.randint(-1, 2, (n, k), device="cuda", generator=g, dtype=torch.int8))
    scale = torch.rand(n, device="cuda", generator=g) * 0.02 + 0.01
    bias = torch.randn(n, device="cuda", generator=g).bfloat16()
    norm = (torch.rand(k, device="cuda", generator=g) + 0.5).bfloat16()
    for m in (1, 8):
        x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
        for variant in VARIANTS:
            for nw in (None, norm):
                got = ternary_linear(x, words, scale, nw, bias, 1e-5, variant=variant)
                ref = ternary_linear_reference(x, words, scale, nw, bias, 1e-5)
                differ = (got != ref).float().mean().item()
                rows.append(
                    {
                        "shape": [m, n, k],
                        "variant": variant,
                        "norm": nw is not None,
                        "share_differing_from_reference": differ,
                        "ok": differ == 0 if nw is None else differ < CODE_FLIP_LIMIT,
                    }
                )
    return rows


GROUPS = (("qkv", (2048, 256, 256)), ("gate_up", (5632, 5632)))


def check_group(name: str, sizes: tuple[int, ...]) -> list[dict]:
    """A fused group (q/k/v or gate/up) against its members run alone, eager and compiled."""
    from bittern.nn.bitlinear import apply_shared
    from bittern.nn.packed_linear import fuse_packed
    from bittern.nn.ternary_linear import TernaryLinear

    rows = []
    g = torch.Generator(device="cuda").manual_seed(2 + len(sizes))

    @torch.compile(fullgraph=True, dynamic=False)
    @torch.no_grad()
    def compiled(layers, x):
        return apply_shared(layers, x)

    layers = []
    for n in sizes:
        layer = TernaryLinear(2048, n, (), norm=True).cuda()
        layer.codes.copy_(torch.randint(-1, 2, (n, 2048), device="cuda", generator=g, dtype=torch.int8))
        layer.scale.fill_(0.0213)
        layer.norm.weight.data = (torch.rand(2048, device="cuda", generator=g) + 0.5).bfloat16()
        layers.append(layer.to_packed())
    for m in (1, 8, 128):
        x = torch.randn(1, m, 2048, device="cuda", generator=g).bfloat16()
        with torch.no_grad():
            alone = [layer(x) for layer in layers]
            if m == 1:
                assert fuse_packed(layers) is not None
            together = apply_shared(layers, x)
            again = compiled(layers, x) if m in (1, 128) else together
        same = all(torch.equal(a, b) for a, b in zip(alone, together, strict=True))
        comp = all(torch.equal(a, b) for a, b in zip(together, again, strict=True))
        rows.append(
            {
                "group": name,
                "tokens": m,
                "equals_members_alone": same,
                "compiled_equals_eager": comp,
                "ok": same and comp,
            }
        )
    return rows


def markov_batch(table: torch.Tensor, batch: int, length: int, g: torch.Generator) -> torch.Tensor:
    """Sequences following `table` (each token's likely successor) 90% of the time."""
    vocab = table.shape[0]
    seq = torch.empty(batch, length, dtype=torch.long, device="cuda")
    seq[:, 0] = torch.randint(0, vocab, (batch,), device="cuda", generator=g)
    for t in range(1, length):
        jump = torch.rand(batch, device="cuda", generator=g) < 0.1
        rand = torch.randint(0, vocab, (batch,), device="cuda", generator=g)
        seq[:, t] = torch.where(jump, rand, table[seq[:, t - 1]])
    return seq


def trained_model(steps: int):
    from bittern.models import ModelConfig, build_model

    cfg = ModelConfig(
        preset="tiny",
        dim=256,
        n_layers=4,
        n_heads=8,
        n_kv_heads=2,
        ffn_dim=704,
        vocab_size=256,
        max_seq_len=512,
    ).resolved()
    torch.manual_seed(0)
    model = build_model(cfg).cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    table = torch.randperm(256, device="cuda", generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    losses = []
    for _ in range(steps):
        seq = markov_batch(table, 32, 129, g)
        with torch.autocast("cuda", torch.bfloat16):
            logits = model(seq[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), seq[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), table, losses


def greedy_with_logits(dec, ids: list[list[int]], n: int):
    """Greedy tokens (B, n) and the logits (n, B, vocab) that chose them, from a StaticDecoder."""
    from bittern.inference import next_token

    batch = torch.tensor(ids, device="cuda")
    lengths = torch.full((len(ids),), len(ids[0]), device="cuda")
    logits = dec.prefill(batch, lengths)
    tok = next_token(logits, dec.sampling, None)
    toks, all_logits, pos = [tok], [logits], lengths.clone()
    for _ in range(n - 1):
        tok, logits = dec.run_step(tok, pos, keep_logits=True)
        pos += 1
        toks.append(tok)
        all_logits.append(logits)
    return torch.stack(toks, 1).cpu(), torch.stack(all_logits).float().cpu()


def check_greedy(steps: int, new: int) -> dict:
    from bittern.generate import sample
    from bittern.inference import StaticDecoder, freeze, fuse, pack
    from bittern.inference.prepare import cast_parameters

    began = time.perf_counter()
    model, table, losses = trained_model(steps)
    trained = time.perf_counter()
    frozen = cast_parameters(freeze(model), torch.bfloat16)
    packed = fuse(pack(copy.deepcopy(frozen)))
    g = torch.Generator(device="cuda").manual_seed(1)
    ids = markov_batch(table, 4, 32, g).tolist()
    ref_tokens, ref_logits = greedy_with_logits(StaticDecoder(frozen, 4, 32 + new), ids, new)
    cand = StaticDecoder(packed, 4, 32 + new).compile()
    greedy_with_logits(cand, ids, 8)  # compiles and records; the next prefill overwrites the cache
    compiled = time.perf_counter()
    got_tokens, got_logits = greedy_with_logits(cand, ids, new)
    sampled = [sample(frozen, p, new, temperature=0) for p in ids]
    rows = []
    for b in range(4):
        same = (ref_tokens[b] == got_tokens[b]).tolist()
        first = same.index(False) if False in same else None
        upto = new if first is None else first + 1  # the step that diverged still saw equal inputs
        diff = (ref_logits[:upto, b] - got_logits[:upto, b]).abs().max().item()
        top2 = ref_logits[:upto, b].topk(2, dim=-1).values
        rows.append(
            {
                "first_divergence": first,
                "max_logit_diff_while_equal": diff,
                "logit_scale": ref_logits[:upto, b].abs().max().item(),
                # how confident the greedy choices were: a tie would let rounding pick either token
                "min_top2_margin": (top2[:, 0] - top2[:, 1]).min().item(),
                "eager_static_equals_generate_sample": ref_tokens[b].tolist()[: len(sampled[b])]
                == sampled[b],
            }
        )
    # the model learned the chain (its greedy choices follow the table), so the tokens compared mean something
    follows = (ref_tokens[:, 1:] == table.cpu()[ref_tokens[:, :-1]]).float().mean().item()
    return {
        "train_steps": steps,
        "train_loss_first_last": [losses[0], losses[-1]],
        "greedy_follows_chain": follows,
        "new_tokens": new,
        "rows": rows,
        "seconds": {
            "train": trained - began,
            "freeze_pack_reference_compile": compiled - trained,
            "compare": time.perf_counter() - compiled,
        },
        "ok": all(r["first_divergence"] is None and r["eager_static_equals_generate_sample"] for r in rows),
    }


def build_checks(args) -> list:
    """(name, check) in the order they run: greedy, kernels, groups, variants (`--only` prefixes kept)."""
    checks = [("greedy", partial(check_greedy, args.train_steps, args.new))]
    checks += [(f"kernels {k}x{n}", partial(check_kernels, k, n)) for k, n in SHAPES_1B]
    checks += [(f"groups {name}", partial(check_group, name, sizes)) for name, sizes in GROUPS]
    checks += [(f"variants {k}x{n}", partial(check_variants, k, n)) for k, n in SHAPES_1B]
    if args.only:
        checks = [(name, fn) for name, fn in checks if name.startswith(tuple(args.only.split(",")))]
    return checks


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument(
        "--train-steps", type=int, default=TRAIN_STEPS, help="steps of the greedy check's model (300 before)"
    )
    p.add_argument("--new", type=int, default=96)
    p.add_argument(
        "--budget", type=float, default=None, help="seconds: no check starts past it (the rest skipped)"
    )
    p.add_argument(
        "--only", default=None, help="comma-separated check name prefixes to run (greedy,kernels,...)"
    )
    return p.parse_args(argv)


def main() -> int:
    start = time.monotonic()
    args = parse_args()
    if not torch.cuda.is_available():
        print("decode_selfcheck needs a CUDA GPU", file=sys.stderr)
        return 1
    from benchmarks.common import checks_exit_status, run_checks

    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    report = run_checks(build_checks(args), args.out, report, args.budget, start)
    print(json.dumps({k: report[k] for k in ("ok", "complete", "skipped", "wall_s")}))
    return checks_exit_status(report)


if __name__ == "__main__":
    sys.exit(main())
