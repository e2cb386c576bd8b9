"""Straight-through estimators with the progressive-quantization blend.

`fake_quant_*(t, lam)` returns `t + lam * (q(t) - t)` in the forward pass and passes the
gradient through unchanged (round and clamp treated as identity). Two equivalent forms:
"detach" (`t + lam * (q(t) - t).detach()`) and "function" (a custom autograd.Function).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bittern.quant.core import (
    dequantize_activations,
    dequantize_weight,
    quantize_activations,
    ternarize,
)

STE_FORMS = ("detach", "function")


class _StraightThrough(torch.autograd.Function):
    """Forward: the blend toward `quantized`; backward: identity for `t`."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, quantized: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return t + lam * (quantized - t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None


def _blend(t: torch.Tensor, fq: Callable[[torch.Tensor], torch.Tensor], lam, ste: str) -> torch.Tensor:
    quantized = fq(t).to(t.dtype)
    lam = torch.as_tensor(lam, dtype=t.dtype, device=t.device)
    if ste == "detach":
        return t + lam * (quantized - t).detach()
    if ste == "function":
        return _StraightThrough.apply(t, quantized, lam)
    raise ValueError(f"ste must be one of {STE_FORMS}, got {ste!r}")


def fake_quant_weight(
    w: torch.Tensor,
    lam: float | torch.Tensor = 1.0,
    granularity: str = "tensor",
    group_size: int = 128,
    gamma_multiplier: float = 1.0,
    ste: str = "detach",
) -> torch.Tensor:
    """W + lam * (W_q * gamma - W), straight-through: the weight BitLinear multiplies by."""

    def fq(t: torch.Tensor) -> torch.Tensor:
        return dequantize_weight(*ternarize(t, granularity, group_size, gamma_multiplier))

    return _blend(w, fq, lam, ste)


def fake_quant_activations(
    x: torch.Tensor, lam: float | torch.Tensor = 1.0, ste: str = "detach"
) -> torch.Tensor:
    """x + lam * (x_q / s_x - x), straight-through, per token."""

    def fq(t: torch.Tensor) -> torch.Tensor:
        return dequantize_activations(*quantize_activations(t))

    return _blend(x, fq, lam, ste)
