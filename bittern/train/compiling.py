"""torch.compile for training: each transformer block on its own (regional compilation).

Compiling the blocks rather than the whole model is what torchtitan does: every block has
the same code, so one compilation serves them all (seconds instead of minutes at 1B), and
DDP's and FSDP2's hooks on the blocks stay outside the compiled code. The blocks are compiled
in place (`nn.Module.compile`), so parameter names, state dicts and checkpoints do not change.
The cross-entropy loss is compiled too (its float32 upcast and log-softmax fuse).

The backend is an argument: the run config's `train.compile_backend` ("inductor" by default;
"aot_eager" lets the CPU tests trace the same graphs without a C++ compiler).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bittern.errors import BitternError

BUILTIN_BACKENDS = ("inductor", "aot_eager", "eager")


def check_backend(name: str) -> str:
    """`name` if torch.compile has a backend of that name (`train.compile_backend`), else a BitternError."""
    if name not in BUILTIN_BACKENDS and name not in torch._dynamo.list_backends(exclude_tags=()):
        raise BitternError(f"train.compile_backend={name!r} is not a torch.compile backend")
    return name


def compile_blocks(model: nn.Module, backend: str) -> int:
    """Compile each block of `model.layers` in place with torch.compile's `backend`; returns how many."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise TypeError(f"{type(model).__name__} has no `layers` to compile block by block")
    for block in layers:
        block.compile(backend=backend)
    return len(layers)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy in float32 of logits (..., vocab) against targets (...)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def compiled_cross_entropy(backend: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return torch.compile(cross_entropy, backend=backend)
