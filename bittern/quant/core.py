"""Reference quantizers (docs/design.md, section 1): the one place the math lives.

Weights: absmean to ternary, `gamma = mean|W|` (times a multiplier), `W_q = round(W / gamma)`
clamped to [-1, 1]. Activations: per-token absmax to int8, `s_x = 127 / max|x|`,
`x_q = round(x * s_x)` clamped to [-128, 127]. Rounding is torch's round-half-to-even.
Scales are computed in float32 whatever the input dtype.
"""

from __future__ import annotations

import torch

EPS = 1e-5
ACT_QMIN, ACT_QMAX = -128, 127
GRANULARITIES = ("tensor", "channel", "group")


def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """View (out, in) as (out, in // group_size, group_size)."""
    out_f, in_f = w.shape
    if group_size <= 0 or in_f % group_size:
        raise ValueError(f"group_size {group_size} must divide in_features {in_f}")
    return w.reshape(out_f, in_f // group_size, group_size)


def weight_scale(
    w: torch.Tensor,
    granularity: str = "tensor",
    group_size: int = 128,
    gamma_multiplier: float = 1.0,
) -> torch.Tensor:
    """The absmean scale gamma, shaped to broadcast against `w` (groups: against the grouped view)."""
    a = w.detach().float().abs()
    if granularity == "tensor":
        gamma = a.mean()
    elif granularity == "channel":
        gamma = a.mean(dim=1, keepdim=True)
    elif granularity == "group":
        gamma = _grouped(a, group_size).mean(dim=2, keepdim=True)
    else:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    return gamma.clamp(min=EPS) * gamma_multiplier


def ternarize(
    w: torch.Tensor,
    granularity: str = "tensor",
    group_size: int = 128,
    gamma_multiplier: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a weight (out, in) to ternary codes (int8 in {-1, 0, 1}) and its float32 scale.

    The scale's shape is () per tensor, (out, 1) per channel and (out, in // group_size, 1)
    per group; `dequantize_weight` inverts it.
    """
    gamma = weight_scale(w, granularity, group_size, gamma_multiplier)
    if granularity == "group":
        return ternary_codes(_grouped(w, group_size), gamma).reshape(w.shape), gamma
    return ternary_codes(w, gamma), gamma


def ternary_codes(w: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """clamp(round(w / gamma), -1, 1) as int8, for a scale computed elsewhere (or by `ternarize`)."""
    return (w.detach().float() / gamma).round().clamp(-1, 1).to(torch.int8)


def dequantize_weight(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """codes * gamma as float32, for any granularity `ternarize` produced."""
    c = codes.float()
    if scale.dim() == 3:
        return (c.reshape(scale.shape[0], scale.shape[1], -1) * scale).reshape(codes.shape)
    return c * scale


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (last dim) absmax int8 codes and the float32 scale s_x = 127 / max|x|."""
    xf = x.detach().float()
    s = xf.new_full((), float(ACT_QMAX)) / xf.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)
    codes = (xf * s).round().clamp(ACT_QMIN, ACT_QMAX)
    return codes.to(torch.int8), s


def dequantize_activations(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """codes / s_x as float32."""
    return codes.float() / scale
