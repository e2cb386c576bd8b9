"""Initialization strategies: where the weights start, and which blocks are quantized at which step.

random       the model's own scaled-normal init; lambda from the progressive schedule only.
pretrained   weights from --init; quantized at once (lambda 1 in every block).
progressive  weights from --init; lambda 0 -> 1 linearly over init.progressive_steps, every block.
layerwise    weights from --init; blocks switch from full precision (lambda 0) to quantized
             (lambda 1) a group of init.layerwise_group at a time, one group every
             init.layerwise_interval steps, bottom-up or top-down (the first group at step 0).
A block's lambda is min(its strategy lambda, the progressive.* lambda), so the two compose.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

from torch import nn

from bittern.config import InitConfig
from bittern.convert.source import source_model_config, source_weights
from bittern.convert.upcycle import needs_upcycle, upcycle_state_dict, upcycled_absent
from bittern.convert.weights import copy_weights
from bittern.errors import BitternError
from bittern.models import ModelConfig
from bittern.nn import bitlinear_layers

# What a source fixes about the student; quantization choices (quant, norm placement, granularity,
# gamma, STE, full_precision) stay the student's own.
ARCH_FIELDS = (
    "arch",
    "vocab_size",
    "vocab_multiple",
    "dim",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "ffn_dim",
    "max_seq_len",
    "rope_theta",
    "norm_eps",
    "tie_embeddings",
    "bias",
)
ARCH_FIELDS_MOE = ("moe_experts", "moe_top_k", "moe_shared_experts", "moe_ffn_dim", "moe_layers")
_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def validate_init(cfg: InitConfig, n_layers: int, has_source: bool) -> int:
    """Check init.* for `n_layers` blocks; return the first step at which every block has lambda 1."""
    if cfg.strategy != "random" and not has_source:
        raise BitternError(f"init.strategy {cfg.strategy!r} needs a checkpoint to start from (--init SOURCE)")
    if cfg.progressive_steps < 0:
        raise BitternError("init.progressive_steps must be >= 0")
    if cfg.layerwise_group < 1 or cfg.layerwise_interval < 1:
        raise BitternError("init.layerwise_group and init.layerwise_interval must be >= 1")
    if cfg.strategy == "progressive":
        return cfg.progressive_steps
    if cfg.strategy == "layerwise":
        return cfg.layerwise_interval * (math.ceil(n_layers / cfg.layerwise_group) - 1)
    return 0


def init_model_config(student: ModelConfig, source: str | Path) -> ModelConfig:
    """The student's resolved ModelConfig for --init SOURCE: source's architecture, own quantization."""
    src = source_model_config(source)
    moe = tuple(f for f in ARCH_FIELDS_MOE if src.moe_experts)  # an MoE source fixes its experts
    arch = {f: getattr(src, f) for f in ARCH_FIELDS + moe}
    norm = student.norm_placement if student.arch in (None, src.arch) else None
    return replace(student, norm_placement=norm, **arch).resolved()


def load_init(model: nn.Module, source: str | Path) -> None:
    """Copy the source's weights into `model` (names and shapes checked; quantizer norms may stay ones).

    A dense source for an MoE model is upcycled: each expert starts from the dense FFN
    (bittern.convert.upcycle), the routers from their random init.
    """
    w = source_weights(source)
    state, absent = w.state_dict, w.may_be_absent
    if needs_upcycle(model.config, state):
        state, absent = upcycle_state_dict(state, model.config), upcycled_absent(absent)
    copy_weights(model, state, f"--init {w.where}", absent)


def block_lambdas(step: int, n_layers: int, cfg: InitConfig) -> list[float]:
    """Lambda of each block (index 0 = nearest the embeddings) at 0-based `step`, per the strategy."""
    if cfg.strategy == "progressive":
        lam = 1.0 if cfg.progressive_steps <= 0 else min(1.0, step / cfg.progressive_steps)
        return [lam] * n_layers
    if cfg.strategy == "layerwise":
        reached = cfg.layerwise_group * (1 + step // cfg.layerwise_interval)
        order = range(n_layers) if cfg.layerwise_order == "bottom_up" else range(n_layers - 1, -1, -1)
        lams = [0.0] * n_layers
        for rank, block in enumerate(order):
            lams[block] = 1.0 if rank < reached else 0.0
        return lams
    return [1.0] * n_layers


class LayerLambdas:
    """Sets every BitLinear's lambda from block_lambdas and a global cap; touches the model only on change."""

    def __init__(self, cfg: InitConfig, n_layers: int, activations: bool = True) -> None:
        self.cfg, self.n_layers, self.activations = cfg, n_layers, activations
        self.applied: tuple[float, ...] | None = None

    def lambdas(self, step: int, cap: float = 1.0) -> list[float]:
        """min(strategy lambda, cap) per block; `cap` is the progressive.* schedule's lambda."""
        return [min(lam, cap) for lam in block_lambdas(step, self.n_layers, self.cfg)]

    def apply(self, model: nn.Module, step: int, cap: float = 1.0) -> float:
        """Set the lambdas for `step` (weights, and activations unless disabled); return their mean."""
        lams = self.lambdas(step, cap)
        if tuple(lams) != self.applied:
            for name, layer in bitlinear_layers(model):
                m = _BLOCK.search(name)
                lam = lams[int(m.group(1))] if m else cap
                layer.set_lambda(lam, lam if self.activations else 1.0)
            self.applied = tuple(lams)
        return sum(lams) / max(1, len(lams))

    def reset(self) -> None:
        """Forget what was applied (after loading a checkpoint, the next apply rewrites every layer)."""
        self.applied = None
