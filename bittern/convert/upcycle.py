"""Upcycling: a dense model's weights as the start of a mixture of experts (sparse upcycling).

Every expert of an MoE layer starts as a copy of that layer's dense FFN, or, when the experts
are narrower (model.moe_ffn_dim < the dense ffn_dim = split x moe_ffn_dim), as one of its
`split` slices: expert e takes rows e % split of gate/up and their columns of down, down scaled
by `split`, so that a token sent with equal weights to one copy of every slice computes the
dense FFN (exactly for the twin; the ternary scales and in-layer norms are per slice). Shared
experts start from the first slice of their width. The routers keep their random start.
With copies (no split) and top-k weights that sum to 1, the MoE computes the dense FFN at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from bittern.errors import BitternError
from bittern.models import ModelConfig

_MLP = re.compile(r"^layers\.(\d+)\.mlp\.(.+)$")
ROUTER_TENSORS = (".mlp.gate.weight", ".mlp.expert_bias")


def needs_upcycle(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> bool:
    """The state holds a dense FFN where `cfg` has an MoE layer."""
    return any(f"layers.{i}.mlp.gate_proj.weight" in state for i in cfg.moe_layer_indices())


def _slice(rest: str, t: torch.Tensor, part: int, width: int, split: int) -> torch.Tensor:
    """Slice `part` (of `width`) of one dense FFN tensor named `rest` (e.g. 'down_proj.weight')."""
    rows = slice(part * width, (part + 1) * width)
    if rest.startswith(("gate_proj.weight", "up_proj.weight", "gate_proj.bias", "up_proj.bias")):
        return t[rows].clone()
    if rest == "down_proj.weight":
        return t[:, rows] * split
    if rest in ("down_proj.norm.weight", "ffn_sub_norm.weight"):
        return t[rows].clone()
    return t.clone()  # the gate/up quantizer norms over the model width, down's bias


def upcycle_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """`state` with the dense FFN of every MoE layer of `cfg` turned into its experts (and shared experts)."""
    moe = set(cfg.moe_layer_indices())
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        m = _MLP.match(name)
        if not m or int(m.group(1)) not in moe:
            out[name] = t
            continue
        i, rest = m.group(1), m.group(2)
        dense = state[f"layers.{i}.mlp.gate_proj.weight"].shape[0]
        width, shared = cfg.expert_ffn_dim, cfg.moe_shared_experts * cfg.expert_ffn_dim
        if dense % width or shared > dense:
            raise BitternError(
                f"upcycling: the dense FFN width {dense} is not a multiple of model.moe_ffn_dim {width} "
                "(or the shared experts are wider than it)"
            )
        split = dense // width
        for e in range(cfg.moe_experts):
            out[f"layers.{i}.mlp.experts.{e}.{rest}"] = _slice(rest, t, e % split, width, split)
        if shared:
            out[f"layers.{i}.mlp.shared_expert.{rest}"] = _slice(rest, t, 0, shared, dense // shared)
    return out


def upcycled_absent(may_be_absent: Callable[[str], bool]) -> Callable[[str], bool]:
    """What may be absent from an upcycled state: the source's own, and the routers."""
    return lambda name: name.endswith(ROUTER_TENSORS) or may_be_absent(name)
