"""AdamW with decay / no-decay and layer-wise learning-rate parameter groups."""

from __future__ import annotations

import re

import torch
from torch import nn

from bittern.config import OptimConfig

_LAYER = re.compile(r"^layers\.(\d+)\.")


_WRAPPERS = {"DistributedDataParallel": "module", "OptimizedModule": "_orig_mod"}


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP (`.module`) or torch.compile (`._orig_mod`) wrappers."""
    while type(model).__name__ in _WRAPPERS:
        model = getattr(model, _WRAPPERS[type(model).__name__])
    return model


def _is_layered(model: nn.Module) -> bool:
    """True for a bittern Transformer, whose parameter names the layer-wise rules understand."""
    from bittern.models.transformer import Transformer

    return isinstance(model, Transformer)


def _is_norm(name: str) -> bool:
    """A parameter of a normalization module (its owner's name mentions 'norm')."""
    owner = name.rpartition(".")[0].rpartition(".")[2]
    return "norm" in owner


def lr_mult_for(name: str, n_layers: int, cfg: OptimConfig) -> float:
    """LR multiplier of the Transformer parameter `name`.

    Under `layers.{i}.`: layer_lr_decay ** (L - 1 - i), times attn_lr_mult (`self_attn.` projections)
    or mlp_lr_mult (`mlp.` projections); norms inside a block get the depth factor only.
    `embed_tokens.` gets embed_lr_mult, an untied `lm_head.` head_lr_mult, anything else 1.
    """
    match = _LAYER.match(name)
    if match is None:
        if name.startswith("embed_tokens."):
            return cfg.embed_lr_mult
        return cfg.head_lr_mult if name.startswith("lm_head.") else 1.0
    mult = cfg.layer_lr_decay ** (n_layers - 1 - int(match.group(1)))
    if _is_norm(name):
        return mult
    if ".self_attn." in name:
        return mult * cfg.attn_lr_mult
    return mult * cfg.mlp_lr_mult if ".mlp." in name else mult


def _group_name(decay: bool, mult: float) -> str:
    base = "decay" if decay else "no_decay"
    return base if mult == 1.0 else f"{base}_lr{mult:g}"


def param_groups(model: nn.Module, weight_decay: float, optim_cfg: OptimConfig | None = None) -> list[dict]:
    """One group per (decays?, lr_mult): keys params, weight_decay, lr_mult, name, decay.

    Matrices decay; 1-D parameters (norms, biases) and embeddings do not (a tied head is the
    embedding and appears once). LR multipliers follow `lr_mult_for` on a bittern Transformer
    given `optim_cfg`; any other model, or no `optim_cfg`, gets multiplier 1 everywhere.
    Every trainable parameter is in exactly one group; decaying groups come first (as before
    layer-wise groups existed, so older optimizer checkpoints still line up), each in order of
    first appearance.
    """
    model = _unwrap(model)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    layered = optim_cfg is not None and _is_layered(model)
    n_layers = len(model.layers) if layered else 0
    groups: dict[tuple[bool, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.dim() >= 2 and id(p) not in embeddings
        mult = lr_mult_for(name, n_layers, optim_cfg) if layered else 1.0
        group = groups.setdefault(
            (decay, mult),
            {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_mult": mult,
                "name": _group_name(decay, mult),
                "decay": decay,
            },
        )
        group["params"].append(p)
    return sorted(groups.values(), key=lambda g: not g["decay"])


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW(beta1, beta2, eps) over layer-wise `param_groups`, each at lr * lr_mult; fused on CUDA."""
    on_cuda = next(model.parameters()).is_cuda
    groups = param_groups(model, cfg.weight_decay, cfg)
    for group in groups:
        group["lr"] = cfg.lr * group["lr_mult"]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=on_cuda or None
    )


def apply_lr_and_wd(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Set each group's lr to lr * lr_mult, and weight_decay on decaying groups (others stay 0)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
        if group.get("decay", group["weight_decay"] != 0.0):
            group["weight_decay"] = weight_decay
