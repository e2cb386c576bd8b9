"""PackedTernaryLinear: TernaryLinear with its codes kept at 2 bits on the GPU, run by Triton kernels.

The same math as `TernaryLinear` (norm inside, int8 activations per token, y = (x_q @ codes^T) *
gamma / s_x), but the weight stays packed 16 codes to an int32 word (`bittern.kernels.ternary_gemv`)
and is decoded in registers by the kernel: a quarter of the int8 codes' memory, an eighth of bf16.
Built by `TernaryLinear.to_packed()` for per-tensor and per-channel scales. Importing this module
imports Triton.
"""

from __future__ import annotations

import torch
from torch import nn

from bittern.kernels.ternary_gemv import pack_words, ternary_linear, unpack_words
from bittern.nn.norm import RMSNorm


class PackedTernaryLinear(nn.Module):
    """Frozen ternary weight as packed int32 words (out, ceil(in / 16)) and gamma per output row."""

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
            x.reshape(-1, shape[-1]).contiguous(), self.words, self.scale, norm_weight, self.bias, eps
        )
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, packed=2bit, norm={self.norm is not None}"
