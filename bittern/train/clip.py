"""Gradient clipping: global norm, by value, per parameter, or against an adaptive threshold.

Norms stay device tensors (no host sync in the step); only `state_dict` and the monitoring
helper `per_layer_grad_norms` read values back to the host.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from bittern.config import ClipConfig

# Adaptive mode uses adaptive_init until this many norms (at most adaptive_window) are recorded.
ADAPTIVE_MIN_HISTORY = 10
_EPS = 1e-6  # as in torch.nn.utils.clip_grad_norm_: coefficient = max_norm / (norm + eps)


def _grads(parameters: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The existing gradients of `parameters` (a tensor counts as one parameter)."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def global_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of all gradients together, sqrt(sum of squares), as a 0-d fp32 tensor."""
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, 2.0).float()


def split_norm(grads: list[torch.Tensor], split: list[torch.Tensor]) -> torch.Tensor:
    """The global norm of `grads` when the `split` among them differ by rank: sqrt(replicated^2 +
    the split ones' squares summed over the ranks)."""
    ids = {id(g) for g in split}
    same = global_norm([g for g in grads if id(g) not in ids]).square()
    own = global_norm(split).square().to(same.device)
    dist.all_reduce(own)
    return (same + own).sqrt()


def _scale_to(grads: list[torch.Tensor], norm: torch.Tensor, threshold: torch.Tensor | float) -> None:
    """Scale `grads` by min(1, threshold / (norm + eps)) in place (the clip_grad_norm_ rule)."""
    if not grads:
        return
    coef = torch.clamp(threshold / (norm + _EPS), max=1.0)
    torch._foreach_mul_(grads, coef.to(grads[0].device))


class GradClipper:
    """Clips gradients by `cfg.mode` and reports the pre-clip global norm and the threshold used."""

    def __init__(self, cfg: ClipConfig) -> None:
        self.cfg = cfg
        self.history: deque[torch.Tensor] = deque(maxlen=max(1, cfg.adaptive_window))

    def clip(self, parameters: Iterable[torch.Tensor], split: Iterable[torch.Tensor] = ()) -> dict:
        """Clip in place; returns {"grad_norm": pre-clip global L2 norm, "clip_threshold": ...}.

        `split`: those of `parameters` that every rank holds different ones of (expert
        parallelism); their squared norms are summed over the ranks (every rank must call).
        """
        grads = _grads(parameters)
        mode, cfg = self.cfg.mode, self.cfg
        norm = global_norm(grads) if not split else split_norm(grads, _grads(split))
        if mode == "norm":
            threshold = cfg.max_norm
            _scale_to(grads, norm, threshold)
        elif mode == "value":
            threshold = cfg.value
            for g in grads:
                g.clamp_(-threshold, threshold)
        elif mode == "layer":
            threshold = cfg.max_norm
            for g in grads:
                _scale_to([g], torch.linalg.vector_norm(g).float(), threshold)
        elif mode == "adaptive":
            threshold = self.adaptive_threshold()
            _scale_to(grads, norm, threshold)
            self.history.append(torch.where(torch.isfinite(norm), norm, torch.nan).detach())
        else:
            threshold = float("inf")
        return {"grad_norm": norm, "clip_threshold": threshold}

    def adaptive_threshold(self) -> torch.Tensor:
        """Threshold for the next adaptive clip.

        adaptive_init while fewer than n = min(ADAPTIVE_MIN_HISTORY, adaptive_window) pre-clip norms
        are recorded, then adaptive_factor * median of the last adaptive_window recorded norms
        (the mean of the two middle values for an even count; non-finite norms are ignored,
        and adaptive_init is used if none is finite).
        """
        cfg = self.cfg
        if len(self.history) < min(ADAPTIVE_MIN_HISTORY, cfg.adaptive_window):
            return torch.tensor(cfg.adaptive_init)
        device = self.history[-1].device
        median = torch.nanquantile(torch.stack([h.to(device) for h in self.history]), 0.5)
        threshold = cfg.adaptive_factor * median
        return torch.where(torch.isnan(threshold), cfg.adaptive_init, threshold)

    def state_dict(self) -> dict:
        """The adaptive history as plain floats (non-finite norms are stored as nan)."""
        return {"history": [float(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        """Restore the adaptive history saved by `state_dict`."""
        self.history.clear()
        self.history.extend(torch.tensor(float(v)) for v in state["history"])


def per_layer_grad_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of each parameter's gradient, by parameter name (one host sync, for monitoring).

    Sharded gradients (FSDP2's DTensors) count whole: their local sums of squares are summed
    over the ranks in one all-reduce, so every rank must call this at the same step.
    """
    named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    if not named:
        return {}
    norms = torch.stack([torch.linalg.vector_norm(_local(g)).float() for _, g in named])
    sharded = [g for _, g in named if isinstance(g, DTensor)]
    if sharded:
        is_shard = norms.new_tensor([isinstance(g, DTensor) for _, g in named], dtype=torch.bool)
        squares = norms.square().where(is_shard, torch.zeros_like(norms))
        dist.all_reduce(squares, group=sharded[0].device_mesh.get_group())
        norms = squares.sqrt().where(is_shard, norms)
    return {n: v for (n, _), v in zip(named, norms.tolist(), strict=True)}


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor, a plain tensor as it is."""
    return t.to_local() if isinstance(t, DTensor) else t
