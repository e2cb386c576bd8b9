"""TernaryLinear: inference-only BitLinear with frozen ternary codes and their exact scale.

Writing codes * gamma back into a BitLinear's latent weight does not reproduce gamma (mean|codes *
gamma| != gamma once codes hold zeros), so exports are run through this module instead: it keeps
the codes (int8 buffer, (out, in)) and the scale gamma that training computed, and applies the
same math as BitLinear at lambda = 1: y = (x_q @ codes^T) * gamma / s_x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bittern.nn.bitlinear import BitLinear
from bittern.nn.norm import RMSNorm
from bittern.quant.core import dequantize_weight, quantize_activations, ternarize


class TernaryLinear(nn.Module):
    """Frozen ternary weight (int8 codes + float32 scale), int8 activations, optional inside RMSNorm."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        scale_shape: tuple[int, ...] = (),
        bias: bool = False,
        norm: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("codes", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(scale_shape, dtype=torch.float32))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.norm = RMSNorm(in_features, norm_eps) if norm else None

    @classmethod
    def from_bitlinear(cls, layer: BitLinear) -> TernaryLinear:
        """Freeze a trained (fully quantized) BitLinear: its codes, its gamma, its norm and bias."""
        if not layer.quantized:
            raise ValueError("from_bitlinear needs a ternary BitLinear (quant='ternary')")
        o = layer.options
        codes, scale = ternarize(layer.weight, o.granularity, o.group_size, o.gamma_multiplier)
        norm = layer.norm is not None
        new = cls(
            layer.in_features,
            layer.out_features,
            tuple(scale.shape),
            layer.bias is not None,
            norm,
            o.norm_eps,
        )
        new.to(layer.weight.device)
        new.codes.copy_(codes)
        new.scale.copy_(scale)
        with torch.no_grad():
            if layer.bias is not None:
                new.bias.copy_(layer.bias.float())
            if norm:
                new.norm.weight.copy_(layer.norm.weight)
        return new

    def to_packed(self) -> nn.Module:
        """This layer with its codes packed 2 bits per weight, run by Triton kernels (for CUDA).

        A `PackedTernaryLinear` sharing the norm and bias; per-group scales have no packed kernel
        and keep this layer. Needs Triton (imported here, not before).
        """
        if self.scale.dim() == 3:
            return self
        from bittern.nn.packed_linear import PackedTernaryLinear

        return PackedTernaryLinear.from_codes(self.codes, self.scale, self.bias, self.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        xq, s_x = quantize_activations(x)
        w = dequantize_weight(self.codes, self.scale)  # codes * gamma, exact in float32
        y = F.linear(xq.float(), w) / s_x
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, scale={tuple(self.scale.shape)}, "
            f"norm={self.norm is not None}"
        )
