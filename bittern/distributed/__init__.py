"""torch.distributed: process groups, DDP/FSDP2 wrapping, cross-rank agreement."""

from bittern.distributed.parallelize import MODES, parallelize, set_gradient_sync
from bittern.distributed.setup import (
    DistInfo,
    any_across_ranks,
    average_gradients,
    barrier,
    init_distributed,
    launched_by_torchrun,
    local_device,
    mean_across_ranks,
    shutdown,
    sum_across_ranks,
)

__all__ = [
    "MODES",
    "DistInfo",
    "any_across_ranks",
    "average_gradients",
    "barrier",
    "init_distributed",
    "launched_by_torchrun",
    "local_device",
    "mean_across_ranks",
    "parallelize",
    "set_gradient_sync",
    "shutdown",
    "sum_across_ranks",
]
