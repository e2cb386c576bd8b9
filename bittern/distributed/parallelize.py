"""Apply data parallelism to a finished model from the outside: DDP or FSDP2 (fully_shard per block).

The model never imports this module. FSDP2 gathers each block's full weights before its
forward, so BitLinear's absmean scale is always computed over the whole weight, never a shard.
"""

from __future__ import annotations

import torch
from torch import nn

from bittern.distributed.setup import DistInfo
from bittern.errors import BitternError

MODES = ("ddp", "fsdp")


def parallelize(
    model: nn.Module,
    mode: str,
    info: DistInfo,
    device: torch.device,
    bucket_cap_mb: int,
    param_dtype: torch.dtype | None,
) -> nn.Module:
    """DDP- or FSDP2-wrap `model` (a no-op for one process); return the module to call."""
    if not info.enabled:
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        return DDP(model, device_ids=ids, bucket_cap_mb=bucket_cap_mb, gradient_as_bucket_view=True)
    if mode == "fsdp":
        return _fully_shard(model, param_dtype)
    raise BitternError(f"dist.mode must be one of {MODES}, got {mode!r}")


def _fully_shard(model: nn.Module, param_dtype: torch.dtype | None) -> nn.Module:
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:  # torch < 2.6 kept FSDP2 under _composable
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.layers:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def set_gradient_sync(module: nn.Module, mode: str, enabled: bool) -> None:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
    if mode == "fsdp" and hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(enabled)
