"""Copy a state dict into a bittern model by name, checking every tensor's place and shape."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bittern.errors import BitternError

QUANTIZER_NORMS = ("_proj.norm.weight", "attn_sub_norm.weight", "ffn_sub_norm.weight")


def quantizer_norm(name: str) -> bool:
    """Norms bittern adds for its quantizer (inside BitLinear or sub-layer): ones when absent."""
    return name.endswith(QUANTIZER_NORMS)


def _aliases(model: nn.Module) -> dict[str, set[str]]:
    """For every state-dict name, the names sharing its storage (tied embeddings)."""
    groups: dict[int, set[str]] = {}
    state = model.state_dict(keep_vars=True)
    for name, t in state.items():
        groups.setdefault(id(t), set()).add(name)
    return {name: groups[id(t)] for name, t in state.items()}


def copy_weights(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    where: str,
    may_be_absent: Callable[[str], bool] = quantizer_norm,
) -> None:
    """Copy `state` into `model`; unknown names, wrong shapes or missing tensors raise BitternError.

    A model tensor absent from `state` keeps its initial value only if `may_be_absent(name)`
    (by default the quantizer's own norms, initialised to ones); tied tensors count as present
    when any of their names is.
    """
    own = model.state_dict()
    for name, t in state.items():
        if name not in own:
            raise BitternError(f"{where}: tensor {name!r} has no place in the model")
        if own[name].shape != t.shape:
            want = tuple(own[name].shape)
            raise BitternError(
                f"{where}: tensor {name!r} has shape {tuple(t.shape)}, the model expects {want}"
            )
    aliases = _aliases(model)
    missing = [n for n in own if not (aliases[n] & state.keys()) and not may_be_absent(n)]
    if missing:
        raise BitternError(f"{where}: missing tensors {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    with torch.no_grad():
        for name, t in state.items():
            own[name].copy_(t)
