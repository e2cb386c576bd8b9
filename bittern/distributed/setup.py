"""Process-group setup from torchrun's environment, and the few collectives the trainer needs.

The environment (RANK, WORLD_SIZE, LOCAL_RANK, set by torchrun) is read here and nowhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device, timeout_s: float) -> DistInfo:
    """Join the process group torchrun set up (NCCL on GPU, gloo on CPU); single process otherwise."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo()
    env = os.environ
    info = DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return info


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    """Each rank's own GPU (cuda:LOCAL_RANK); the CPU stays the CPU."""
    return torch.device("cuda", info.local_rank) if device.type == "cuda" and info.enabled else device


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean_across_ranks(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of a scalar over ranks; NaN/Inf on any rank reaches every rank."""
    if not info.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world


def sum_across_ranks(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The elementwise sum of a tensor over ranks (a copy; the input is left alone)."""
    if not info.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def average_gradients(params: list[torch.Tensor], info: DistInfo) -> None:
    """Mean of each parameter's gradient over ranks, in place (for parameters no wrapper syncs).

    The distillation projections live outside the DDP/FSDP2-wrapped model, so without this
    each rank would step its own copy on its own rows and the copies would drift apart.
    """
    if not info.enabled:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(info.world)


def any_across_ranks(flag: bool, device: torch.device, info: DistInfo) -> bool:
    """True on every rank if it is True on any."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
