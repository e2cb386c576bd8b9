"""Expert parallelism (`dist.expert_parallel`): each rank holds E / world experts of every MoE layer.

Applied from the outside, before DDP: `shard_experts` swaps every MoE layer's ModuleList of
experts for an `ExpertShard` holding this rank's block of them (rank r of W: experts r*E/W to
(r+1)*E/W - 1, named by their global index, so state dicts and DCP checkpoints keep the model's
names and a sharded checkpoint loads whole in one process).
The router, the routing biases, the shared experts and everything else stay replicated.

A forward routes this rank's tokens with the replicated router, then (`dispatch_combine`):

1. sorts the token copies by expert (so by the rank that holds it) and sends the number of
   copies per expert with one all_to_all_single: every rank learns how many rows it gets from
   each rank for each of its experts (the split sizes reach the host: one synchronization);
2. sends the rows with a second all_to_all_single (autograd: its backward is the reverse
   all-to-all), runs them through the local experts as grouped GEMMs (bittern.models.moe; the
   layer's `expert_path` does not apply), and sends the outputs back with a third, after which
   the top-k weighted sum combines them on the rank the tokens came from.

Gradients. Each rank's loss is the mean over its own tokens and DDP averages the replicated
parameters' gradients over ranks. An expert's gradient already sums every rank's tokens (the
all-to-all backward brings them), so a hook divides it by the world size: the same mean DDP
takes, and the same gradient one process gets from the whole batch. DDP must not all-reduce
the expert parameters (each rank holds different ones): `shard_experts` returns their names,
which bittern.distributed.parallelize gives DDP to ignore (`_ddp_params_and_buffers_to_ignore`).
The global gradient norm sums the experts' squared norms over ranks (bittern.train.clip, `split`).

The routing statistics (token counts per expert, hence the routing biases) are counted before
the dispatch, over this rank's tokens for all E experts, and summed over ranks by
bittern.monitor.moe exactly as under plain DDP.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from bittern.config import Config
from bittern.errors import BitternError
from bittern.models.moe import combine, grouped_rows, moe_layers, new_expert_codes, sort_by_expert


class _AllToAll(torch.autograd.Function):
    """all_to_all_single of rows: send in_splits[d] rows to rank d, receive out_splits[s] from rank s."""

    @staticmethod
    def forward(ctx, x, out_splits: list[int], in_splits: list[int], group):
        ctx.splits, ctx.group = (out_splits, in_splits), group
        return _all_to_all(x, out_splits, in_splits, group)

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        return _all_to_all(grad, in_splits, out_splits, ctx.group), None, None, None


def _all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
    out = x.new_empty((sum(out_splits), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
    return out


def all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group=None) -> torch.Tensor:
    """Rows of `x` (in_splits[d] for rank d, in rank order) exchanged over `group`, differentiably."""
    return _AllToAll.apply(x, out_splits, in_splits, group)


def exchange_counts(counts: torch.Tensor, world: int, group=None) -> torch.Tensor:
    """(world, E / world): [s, j] = token copies rank s sends to this rank's j-th expert."""
    received = torch.empty_like(counts)
    dist.all_to_all_single(received, counts, group=group)
    return received.view(world, -1)


def run_local(experts: list[nn.Module], xs: torch.Tensor, received: torch.Tensor, codes=None) -> torch.Tensor:
    """Received rows (per source rank, per local expert) through the local experts, in their order.

    `codes`: the local experts' kept ternary codes (`bittern.models.moe.new_expert_codes`)."""
    n_src, n_local = received.shape
    local_id = torch.arange(n_local, device=xs.device).repeat(n_src)
    rows_expert = torch.repeat_interleave(local_id, received.flatten(), output_size=xs.shape[0])
    order = rows_expert.argsort(stable=True)
    ys = grouped_rows(experts, xs[order], received.sum(dim=0), codes)
    return torch.empty_like(ys).index_copy(0, order, ys)


def dispatch_combine(
    experts: list[nn.Module],
    n_experts: int,
    x: torch.Tensor,
    weights: torch.Tensor,
    chosen: torch.Tensor,
    group,
    codes=None,
) -> torch.Tensor:
    """This rank's MoE output (N, D) for tokens x (N, D) routed to `chosen` (N, k) of all E experts,
    computed by whichever rank holds each expert (`experts` are this rank's, E / world of them)."""
    world, k = dist.get_world_size(group), chosen.shape[1]
    order, counts = sort_by_expert(chosen, n_experts)  # sorted by expert, so by the rank holding it
    received = exchange_counts(counts, world, group)
    send = counts.view(world, -1).sum(dim=1).tolist()
    recv = received.sum(dim=1).tolist()
    xs = all_to_all(x[order // k], recv, send, group)
    ys = run_local(experts, xs, received, codes)
    back = all_to_all(ys, send, recv, group)
    outputs = torch.empty_like(back).index_copy(0, order, back)  # back to token-copy order
    return combine(outputs, weights)


class ExpertShard(nn.Module):
    """This rank's experts of one MoE layer (children named by global index); runs the whole layer's
    experts for this rank's tokens over `group` (`dispatch_combine`)."""

    def __init__(self, experts: nn.ModuleList, rank: int, world: int, group) -> None:
        super().__init__()
        self.n_experts, self.group = len(experts), group
        per = self.n_experts // world
        for e in range(rank * per, (rank + 1) * per):
            self.add_module(str(e), experts[e])
        self.expert_codes = new_expert_codes()  # the local ternary experts' stacked codes

    @torch.compiler.disable  # host-synchronizing collectives: the compiled block breaks around them
    def forward(self, x: torch.Tensor, weights: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        experts = list(self.children())
        return dispatch_combine(experts, self.n_experts, x, weights, chosen, self.group, self.expert_codes)


def shard_experts(model: nn.Module, rank: int, world: int, group=None) -> list[str]:
    """Keep only this rank's experts in every MoE layer of `model`; return their parameter and buffer names.

    Their gradients are divided by `world` as they arrive (see the module docstring).
    """
    layers = moe_layers(model)
    if not layers:
        raise BitternError("dist.expert_parallel needs a mixture-of-experts model (model.moe_experts > 0)")
    names = []
    for name, moe in layers:
        if not isinstance(moe.experts, nn.ModuleList):
            raise BitternError(f"dist.expert_parallel: {name} is sharded already")
        if moe.n_experts % world:
            raise BitternError(
                f"dist.expert_parallel needs model.moe_experts ({moe.n_experts}) divisible by {world} ranks"
            )
        moe.experts = ExpertShard(moe.experts, rank, world, group)
        prefix = f"{name}.experts." if name else "experts."
        names += [prefix + n for n, _ in moe.experts.named_parameters()]
        names += [prefix + n for n, _ in moe.experts.named_buffers()]
        for p in moe.experts.parameters():
            p.register_hook(lambda g: g / world)
    return names


def expert_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters each rank holds its own of (the sharded experts'); empty without expert parallelism."""
    return [p for m in model.modules() if isinstance(m, ExpertShard) for p in m.parameters()]


def check_expert_parallel(cfg: Config) -> None:
    """Refuse what expert parallelism cannot do, on any number of ranks: a dense model, or FSDP2
    (which would shard the experts again; DDP carries the replicated parameters)."""
    if not cfg.dist.expert_parallel:
        return
    if cfg.dist.mode != "ddp":
        raise BitternError(f"dist.expert_parallel needs dist.mode = 'ddp', not {cfg.dist.mode!r}")
    if not cfg.model.moe_experts:
        raise BitternError("dist.expert_parallel needs a mixture-of-experts model (model.moe_experts > 0)")
