"""2-bit packed FSDP2 all-gather of ternary weights (`dist.packed_all_gather`).

Each BitLinear weight's local shard is wrapped in `TernaryShard` before `fully_shard`. FSDP2's
all-gather extension points call it: `fsdp_pre_all_gather` turns the shard into ternary codes
packed 4 per byte (uint8, 2 bits each: 8x fewer bytes than bf16, 16x than fp32), and
`fsdp_post_all_gather` unpacks the gathered codes into codes * gamma in the param dtype. The
gathered weight is therefore already quantized: the layer uses it as is (`weight_prequantized`),
and its gradient, passed straight through, is exactly the straight-through estimator's.

gamma is the absmean of the whole weight, never of a shard. Per tensor it cannot be known from
one shard, so `pack_shards` computes every packed weight's gamma in one all-reduce of the
stacked local sums of |W|, after each optimizer step and after weights are loaded, and packs
each shard's codes then, once: every all-gather until the next step (forward and backward, every
micro-batch) sends the same bytes. FSDP2 shards dim 0, so each rank holds whole rows: per
channel, a shard's row scales are its own and travel beside the codes (float32, one per row).
Any other op on a `TernaryShard` (optimizer steps, state dicts, DCP, `full_tensor`) runs on the
plain tensor inside.

On CUDA the packing and the unpacking each run as one compiled kernel per weight (`_on_gpu`):
as a dozen PyTorch ops per weight per all-gather they made a 1B step under FSDP2 2.7x as long
(one H200, one rank: 491 against 179 ms).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.utils._pytree as pytree
from torch import nn
from torch.distributed.tensor import DTensor

from bittern.config import Config
from bittern.errors import BitternError
from bittern.export.pack import pack_2bit_rows, unpack_2bit_rows
from bittern.nn import BitLinear
from bittern.quant.core import EPS, dequantize_weight, ternarize, ternary_codes

PACKED_GRANULARITIES = ("tensor", "channel")
aten = torch.ops.aten
# Ops whose result is (a view of, or storage shaped like) the shard: FSDP2 builds its padded
# local shard and views with these, and they must keep the wrapper. Everything else returns
# plain tensors (optimizer states, clones, collectives' outputs, reductions).
_KEEP_WRAPPER = {
    aten.detach.default,
    aten.alias.default,
    aten.view.default,
    aten._unsafe_view.default,
    aten.slice.Tensor,
    aten.split.Tensor,
    aten.split_with_sizes.default,
    aten.as_strided.default,
    aten.new_zeros.default,
    aten.new_empty.default,
    aten.empty_like.default,
}


def _on_gpu(fn: Callable) -> Callable:
    """`fn` compiled into one kernel for CUDA tensors (compiled on first use); as is elsewhere."""
    compiled = None

    def call(t: torch.Tensor, *args):
        nonlocal compiled
        if t.device.type != "cuda":
            return fn(t, *args)
        if compiled is None:  # Inductor: these run on CUDA tensors only, whatever train.compile_backend is
            compiled = torch.compile(fn, backend="inductor")
        return compiled(t, *args)

    call.__doc__ = fn.__doc__
    return call


@_on_gpu
def pack_shard(shard: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """A shard's ternary codes under a gamma of the whole weight, packed 4 per byte (uint8)."""
    return pack_2bit_rows(ternary_codes(shard, gamma))


@_on_gpu
def pack_shard_per_channel(shard: torch.Tensor, multiplier: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed codes, float32 row scales) of a shard of whole rows, each row scaled by its own absmean."""
    codes, gamma = ternarize(shard, "channel", gamma_multiplier=multiplier)
    return pack_2bit_rows(codes), gamma


@_on_gpu
def unpack_weight(packed: torch.Tensor, gamma: torch.Tensor, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """Gathered packed codes * gamma (a scalar, or one per row) as a `dtype` weight of `cols` columns."""
    return dequantize_weight(unpack_2bit_rows(packed, cols), gamma).to(dtype)


class ShardScale:
    """What every view of one weight's shard shares: how to ternarize it, its gamma per tensor,
    and its packed codes since the last `pack_shards`."""

    def __init__(self, granularity: str, multiplier: float, numel: int) -> None:
        self.granularity, self.multiplier, self.numel = granularity, multiplier, numel
        self.gamma: torch.Tensor | None = None  # per tensor: float32 scalar of the whole weight
        self.packed: tuple[torch.Tensor, ...] | None = None  # what the all-gather sends
        self.version = -1  # the sharded parameter's version counter when packed

    def pack(self, shard: torch.Tensor, version: int) -> None:
        """Pack `shard` (the plain local rows) under `gamma` (per tensor) or its own row scales."""
        if self.granularity == "channel":
            self.packed = pack_shard_per_channel(shard, self.multiplier)
        else:
            self.packed = (pack_shard(shard, self.gamma),)
        self.version = version


class TernaryShard(torch.Tensor):
    """A BitLinear weight's local shard that FSDP2 all-gathers as packed ternary codes."""

    _tensor: torch.Tensor
    _scale: ShardScale

    @staticmethod
    def __new__(cls, tensor: torch.Tensor, scale: ShardScale):
        return torch.Tensor._make_wrapper_subclass(
            cls,
            tensor.shape,
            strides=tensor.stride(),
            storage_offset=tensor.storage_offset(),
            dtype=tensor.dtype,
            device=tensor.device,
            layout=tensor.layout,
            requires_grad=tensor.requires_grad,
        )

    def __init__(self, tensor: torch.Tensor, scale: ShardScale) -> None:
        self._tensor, self._scale = tensor, scale

    def __repr__(self) -> str:
        return f"TernaryShard({self._tensor!r}, granularity={self._scale.granularity})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        wrappers = {}

        def unwrap(t: TernaryShard) -> torch.Tensor:
            wrappers[id(t._tensor)] = t
            return t._tensor

        inner_args, inner_kwargs = pytree.tree_map_only(cls, unwrap, (args, kwargs or {}))
        out = func(*inner_args, **inner_kwargs)
        scale = next(iter(wrappers.values()))._scale

        def rewrap(t: torch.Tensor) -> torch.Tensor:
            if id(t) in wrappers:  # an in-place op hands back its argument
                return wrappers[id(t)]
            return cls(t, scale) if func in _KEEP_WRAPPER else t

        return pytree.tree_map_only(torch.Tensor, rewrap, out)

    def __tensor_flatten__(self):
        return ["_tensor"], self._scale

    @staticmethod
    def __tensor_unflatten__(inner_tensors, scale, outer_size, outer_stride):
        return TernaryShard(inner_tensors["_tensor"], scale)

    def __reduce_ex__(self, protocol):  # torch.save (DCP) writes the plain tensor
        return self._tensor.__reduce_ex__(protocol)

    def fsdp_pre_all_gather(self, mesh, outer_size, outer_stride, module, mp_policy):
        """The shard as packed codes (and, per channel, its rows' float32 scales)."""
        assert self.shape[1:] == outer_size[1:], "FSDP2 must shard dim 0: whole rows on every rank"
        s = self._scale
        # A guard against a forgotten pack_shards: in-place writes (a load, a foreach
        # optimizer step) move the version counter; fused optimizer kernels do not, hence the
        # trainer's call after every step whatever the optimizer.
        if s.packed is None or s.version != module.weight._version:
            raise RuntimeError(
                "packed all-gather: the weights changed since they were packed; "
                "call bittern.distributed.packed.pack_shards(model) after writing them"
            )
        return s.packed, (s.gamma if s.granularity == "tensor" else None, outer_size[1])

    def fsdp_post_all_gather(self, outputs, metadata, param_dtype, *, out=None):
        """codes * gamma of the whole weight, in `param_dtype` (into `out` after the first call)."""
        gamma, cols = metadata
        if gamma is None:  # per channel: the gathered row scales
            gamma = outputs[1]
        weight = unpack_weight(outputs[0], gamma, cols, param_dtype)
        if out is not None:  # FSDP2's own buffer, saved for backward: refilled, not a new version
            with torch.no_grad(), torch.autograd._unsafe_preserve_version_counter(out):
                out.copy_(weight)
            return None
        return weight, (weight,)


def packed_weights(model: nn.Module) -> list[nn.Module]:
    """The BitLinears whose weights `install` wrapped (whatever FSDP2 state they are in)."""
    return [m for m in model.modules() if getattr(m, "weight_prequantized", False)]


def install(block: nn.Module, world: int) -> None:
    """Wrap the weights of `block`'s quantized BitLinears; call before `fully_shard(block)`."""
    for name, layer in block.named_modules():
        if not isinstance(layer, BitLinear) or not layer.quantized:
            continue
        o = layer.options
        if o.granularity not in PACKED_GRANULARITIES:
            raise BitternError(f"dist.packed_all_gather: granularity {o.granularity!r} ({name})")
        if layer.out_features % world:
            raise BitternError(
                f"dist.packed_all_gather needs every quantized weight's rows split evenly over the "
                f"{world} ranks; {name} has {layer.out_features}"
            )
        w = layer.weight
        scale = ShardScale(o.granularity, o.gamma_multiplier, w.numel())
        layer.weight = nn.Parameter(TernaryShard(w.detach(), scale), requires_grad=w.requires_grad)
        layer.weight_prequantized = True


def _local(layer: nn.Module) -> TernaryShard:
    w = layer.weight
    local = w._local_tensor if isinstance(w, DTensor) else w
    assert isinstance(local, TernaryShard), "pack_shards needs the sharded weights (between steps)"
    return local


@torch.no_grad()
def pack_shards(model: nn.Module) -> None:
    """Pack every packed weight's shard for the all-gathers to come: per tensor under gamma =
    mean|W| over the whole weight (one all-reduce for them all), per channel under its rows' own.

    Every rank calls it after each optimizer step and after weights are loaded or rewritten.
    """
    layers = packed_weights(model)
    shards = [_local(m) for m in layers]
    per_tensor = [s for s in shards if s._scale.granularity == "tensor"]
    if per_tensor:
        sums = torch.stack([s._tensor.float().abs().sum() for s in per_tensor])
        dist.all_reduce(sums, group=layers[0].weight.device_mesh.get_group())
        for shard, total in zip(per_tensor, sums, strict=True):
            s = shard._scale
            s.gamma = (total / s.numel).clamp(min=EPS) * s.multiplier
    for layer, shard in zip(layers, shards, strict=True):
        shard._scale.pack(shard._tensor, layer.weight._version)


def check_packed_all_gather(cfg: Config) -> None:
    """Refuse settings the packed all-gather cannot honour: it gathers codes, never the latent weight."""
    if not cfg.dist.packed_all_gather:
        return
    problems = [
        (cfg.dist.mode != "fsdp", f"needs dist.mode = 'fsdp', not {cfg.dist.mode!r}"),
        (
            cfg.model.weight_granularity not in PACKED_GRANULARITIES,
            f"supports model.weight_granularity tensor or channel, not {cfg.model.weight_granularity!r}",
        ),
        (
            cfg.progressive.schedule != "none",
            "cannot blend in full precision: progressive.schedule must be 'none'",
        ),
        (
            cfg.init.strategy in ("progressive", "layerwise"),
            f"cannot blend in full precision: init.strategy {cfg.init.strategy!r}",
        ),
        (
            cfg.guard.plateau_patience > 0,
            "cannot fall back to progressive quantization: guard.plateau_patience must be 0",
        ),
    ]
    for bad, message in problems:
        if bad:
            raise BitternError(f"dist.packed_all_gather {message}")
