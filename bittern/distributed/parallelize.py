"""Apply data parallelism to a finished model from the outside: DDP or FSDP2 (fully_shard per block),
and expert parallelism under DDP.

The model never imports this module. FSDP2 gathers each block's full weights before its
forward, so BitLinear's absmean scale is always computed over the whole weight, never a shard.
With `packed` it gathers their ternary codes instead, 2 bits each (bittern.distributed.packed).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from bittern.distributed.expert_parallel import shard_experts
from bittern.distributed.packed import install, pack_shards
from bittern.errors import BitternError

MODES = ("ddp", "fsdp")


def parallelize(
    model: nn.Module,
    mode: str,
    device: torch.device,
    bucket_cap_mb: int,
    param_dtype: torch.dtype | None,
    packed: bool = False,
    reshard_after_forward: bool = True,
    expert_parallel: bool = False,
) -> nn.Module:
    """DDP- or FSDP2-wrap `model` over the default process group; return the module to call.

    The trainer calls it only on several ranks; on one (a benchmark's) it wraps all the same.
    `packed` (FSDP2 only): all-gather the BitLinear weights as packed ternary codes.
    `reshard_after_forward` (FSDP2 only): False keeps each block's gathered weights from its
    forward to its backward instead of gathering them again.
    """
    if expert_parallel and mode != "ddp":
        raise BitternError(f"dist.expert_parallel needs dist.mode = 'ddp', not {mode!r}")
    if packed and mode != "fsdp":
        raise BitternError(f"dist.packed_all_gather needs dist.mode = 'fsdp', not {mode!r}")
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        # The blocks are compiled one by one (bittern.train.compiling), so DDP's hooks already
        # sit between compiled graphs. Dynamo's DDPOptimizer would also split every block's
        # graph at each 25 MB gradient bucket: at 1B that cost 0.75x on one GPU (RESULTS.md).
        torch._dynamo.config.optimize_ddp = False

        ids = [device.index] if device.type == "cuda" else None
        if expert_parallel:  # its own group: its all-to-alls never queue behind DDP's all-reduces
            group = dist.new_group()
            local = shard_experts(model, dist.get_rank(), dist.get_world_size(), group)
            DDP._set_params_and_buffers_to_ignore_for_model(model, local)
        return DDP(model, device_ids=ids, bucket_cap_mb=bucket_cap_mb, gradient_as_bucket_view=True)
    if mode == "fsdp":
        return _fully_shard(model, param_dtype, dist.get_world_size() if packed else 0, reshard_after_forward)
    raise BitternError(f"dist.mode must be one of {MODES}, got {mode!r}")


def _fully_shard(
    model: nn.Module, param_dtype: torch.dtype | None, packed_world: int, reshard_after_forward: bool
) -> nn.Module:
    """fully_shard every block, then the root; BitLinear weights packed over `packed_world` ranks if > 0."""
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:  # torch < 2.6 kept FSDP2 under _composable
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.layers:
        if packed_world:
            install(block, packed_world)
        fully_shard(block, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mp_policy=policy)
    if packed_world:
        pack_shards(model)  # the first forward's
    return model


def set_gradient_sync(module: nn.Module, mode: str, enabled: bool) -> None:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
    if mode == "fsdp" and hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(enabled)
