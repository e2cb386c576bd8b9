"""PackedTernaryLinear: TernaryLinear with its codes kept at 2 bits on the GPU, run by Triton kernels.

The same math as `TernaryLinear` (norm inside, int8 activations per token, y = (x_q @ codes^T) *
gamma / s_x), but the weight stays packed 16 codes to an int32 word (`bittern.kernels.ternary_gemv`)
and is decoded in registers by the kernel: a quarter of the int8 codes' memory, an eighth of bf16.
Built by `TernaryLinear.to_packed()` for per-tensor and per-channel scales. `variant` (a plain
attribute, "auto" by default) picks the kernel (`bittern.kernels.ternary_gemv.VARIANTS`).

`PackedTernaryGroup` runs layers that read the same input (q/k/v, gate/up) as one: their words,
scales and biases concatenated by rows, x normalized and quantized once per distinct norm weight,
one kernel launch, the output split. `fuse_packed` builds it and keeps it on the first member
(`shared_group`), where `bittern.nn.apply_shared` finds it; the members' words and scales become
views of the group's, so memory is not doubled and each member still runs alone. Importing this
module imports Triton.
"""

from __future__ import annotations

import torch
from torch import nn

from bittern.kernels.ternary_gemv import (
    MAX_GROUP,
    pack_words,
    ternary_linear,
    ternary_linear_group,
    unpack_words,
)
from bittern.nn.norm import RMSNorm


class PackedTernaryLinear(nn.Module):
    """Frozen ternary weight as packed int32 words (out, ceil(in / 16)) and gamma per output row."""

    groupable = True  # `apply_shared` looks for a `shared_group` on this class only

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        norm: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        words = -(-in_features // 16)
        self.register_buffer("words", torch.zeros(out_features, words, dtype=torch.int32))
        self.register_buffer("scale", torch.ones(out_features, dtype=torch.float32))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.norm = RMSNorm(in_features, norm_eps) if norm else None
        self.variant = "auto"
        self.shared_group: PackedTernaryGroup | None = None  # on a group's first member
        self.shared_key: tuple[int, int] | None = None  # (group's key, place) on each member

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None = None,
        norm: RMSNorm | None = None,
    ) -> PackedTernaryLinear:
        """Pack (out, in) codes with a per-tensor () or per-channel (out, 1) gamma; reuses `norm`."""
        out_f, in_f = codes.shape
        new = cls(in_f, out_f, bias is not None)
        new.to(codes.device)
        new.words = pack_words(codes)
        new.scale = scale.float().reshape(-1).expand(out_f).contiguous()
        if bias is not None:
            new.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        new.norm = norm
        return new

    @property
    def codes(self) -> torch.Tensor:
        """The int8 codes (out, in), unpacked (for checks and exports; the forward never builds them)."""
        return unpack_words(self.words, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        norm_weight = None if self.norm is None else self.norm.weight
        eps = 1e-5 if self.norm is None else self.norm.eps
        y = ternary_linear(
            x.reshape(-1, shape[-1]).contiguous(),
            self.words,
            self.scale,
            norm_weight,
            self.bias,
            eps,
            variant=self.variant,
        )
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, packed=2bit, norm={self.norm is not None}"


class PackedTernaryGroup(nn.Module):
    """PackedTernaryLinears reading the same x, as one layer over their concatenated rows.

    `norm_weight` is None (no inside norm), the one (in,) weight all members share, or (G, in)
    with one row per member; `forward` returns the members' outputs, in order.
    """

    def __init__(self, layers: list[PackedTernaryLinear]) -> None:
        super().__init__()
        first = layers[0]
        self.in_features = first.in_features
        self.sizes = tuple(layer.out_features for layer in layers)
        self.starts = [sum(self.sizes[:i]) for i in range(1, len(layers))]
        self.register_buffer("words", torch.cat([layer.words for layer in layers]))
        self.register_buffer("scale", torch.cat([layer.scale for layer in layers]))
        biases = [layer.bias for layer in layers]
        self.bias = None
        if any(b is not None for b in biases):
            dtype = next(b.dtype for b in biases if b is not None)
            full = [
                torch.zeros(layer.out_features, dtype=dtype, device=first.words.device) if b is None else b
                for layer, b in zip(layers, biases, strict=True)
            ]
            self.bias = nn.Parameter(torch.cat([b.detach().to(dtype) for b in full]), requires_grad=False)
        self.eps = 1e-5 if first.norm is None else first.norm.eps
        self.norm_weight = None
        if first.norm is not None:
            weights = [layer.norm.weight.detach() for layer in layers]
            same = all(torch.equal(w, weights[0]) for w in weights[1:])
            self.norm_weight = nn.Parameter(
                (weights[0] if same else torch.stack(weights)).clone(), requires_grad=False
            )
        self.variant = first.variant
        self.key = id(self)

    @staticmethod
    def can_fuse(layers) -> bool:
        """2-3 PackedTernaryLinears of one width and device, all with an inside norm (one eps) or none."""
        if not 2 <= len(layers) <= MAX_GROUP or not all(isinstance(m, PackedTernaryLinear) for m in layers):
            return False
        first = layers[0]
        for layer in layers:
            if layer.in_features != first.in_features or (layer.norm is None) != (first.norm is None):
                return False
            if layer.words.device != first.words.device:
                return False
            if layer.norm is not None and (
                layer.norm.eps != first.norm.eps or layer.norm.weight.dtype != first.norm.weight.dtype
            ):
                return False
        return True

    def serves(self, layers) -> bool:
        """Whether `layers` are exactly this group's members, in order, none with forward hooks."""
        return len(layers) == len(self.sizes) and all(
            getattr(m, "shared_key", None) == (self.key, i) and not (m._forward_hooks or m._forward_pre_hooks)
            for i, m in enumerate(layers)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        shape = x.shape
        y = ternary_linear_group(
            x.reshape(-1, shape[-1]).contiguous(),
            self.words,
            self.scale,
            self.norm_weight,
            self.bias,
            self.eps,
            self.starts,
            variant=self.variant,
        )
        y = y.view(*shape[:-1], y.shape[-1])
        return list(y.split(self.sizes, dim=-1))

    def extra_repr(self) -> str:
        norms = 0 if self.norm_weight is None else 1 if self.norm_weight.dim() == 1 else len(self.sizes)
        return f"{self.in_features}, {self.sizes}, packed=2bit, norms={norms}"


def fuse_packed(layers) -> PackedTernaryGroup | None:
    """Group `layers` (see `PackedTernaryGroup.can_fuse`) and keep the group on the first as
    `shared_group`; the members' words and scales become row views of the group's. None (and
    nothing changed) when they cannot be fused."""
    layers = list(layers)
    if not PackedTernaryGroup.can_fuse(layers):
        return None
    group = PackedTernaryGroup(layers)
    for i, (layer, start, size) in enumerate(zip(layers, [0, *group.starts], group.sizes, strict=True)):
        layer.words = group.words[start : start + size]
        layer.scale = group.scale[start : start + size]
        layer.shared_key = (group.key, i)
    layers[0].shared_group = group
    return group
