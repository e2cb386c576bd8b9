"""BitLinear at lambda = 1 as one autograd.Function over the custom ops of `bittern.kernels.ops`.

Forward: fused RMSNorm + int8 quantization of x, then the int8 GEMM against the cached
ternary weight with gamma / s_x applied in the epilogue. Saved for backward: x (only for the
norm's backward), the int8 codes and s_x (not a 16-bit copy of the activation), rstd.
Backward, straight-through like the reference: grad_input through W_q * gamma, then the
norm's backward; grad_weight = grad^T @ (codes / s_x). Numerically it is the reference
layer with one difference: the forward product is exact (int32) where the reference
rounds its operands to the autocast dtype.
"""

from __future__ import annotations

import torch
from torch import nn

import bittern.kernels.ops  # noqa: F401  (registers torch.ops.bittern.*)

ops = torch.ops.bittern


class BitLinearFunction(torch.autograd.Function):
    """y = (x_q @ W_q^T) * gamma / s_x for 2-D x, with the straight-through gradients."""

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        norm_weight: torch.Tensor | None,
        weight: torch.Tensor,
        weight_lambda: torch.Tensor,
        act_lambda: torch.Tensor,
        eps: float,
        gamma_multiplier: float,
        per_channel: bool,
        out_dtype: torch.dtype,
        grad_input_int8: bool,
        grad_weight_int8: bool,
    ) -> torch.Tensor:
        codes, scale, rstd = ops.rmsnorm_quant(x, norm_weight, eps)
        y = ops.ternary_linear(
            codes, scale, weight, weight_lambda, act_lambda, gamma_multiplier, per_channel, out_dtype
        )
        ctx.save_for_backward(x if norm_weight is not None else None, norm_weight, weight, codes, scale, rstd)
        ctx.x_dtype = x.dtype
        ctx.settings = (gamma_multiplier, per_channel, grad_input_int8, grad_weight_int8)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, norm_weight, weight, codes, scale, rstd = ctx.saved_tensors
        gamma_multiplier, per_channel, grad_input_int8, grad_weight_int8 = ctx.settings
        grad = grad.contiguous()
        dx = dnorm = dweight = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            dy = ops.ternary_linear_grad_input(grad, weight, gamma_multiplier, per_channel, grad_input_int8)
            if norm_weight is None:
                dx = dy.to(ctx.x_dtype)
            else:
                dx, dnorm = ops.rmsnorm_quant_backward(dy, x, norm_weight, rstd)
        if ctx.needs_input_grad[2]:
            dweight = ops.ternary_linear_grad_weight(grad, codes, scale, grad_weight_int8, weight.dtype)
        return dx, dnorm, dweight, None, None, None, None, None, None, None, None


def output_dtype(layer: nn.Module, x: torch.Tensor) -> torch.dtype:
    """The dtype the reference path's F.linear returns: autocast's, else the norm's output dtype."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype if layer.norm is None else torch.promote_types(layer.norm.weight.dtype, x.dtype)


def bitlinear_fast(
    layer: nn.Module, x: torch.Tensor, grad_input_int8: bool = False, grad_weight_int8: bool = False
) -> torch.Tensor:
    """BitLinear `layer` applied to x (..., in_features) through `BitLinearFunction` (lambda must be 1)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    norm = layer.norm
    y = BitLinearFunction.apply(
        x2,
        None if norm is None else norm.weight,
        layer.weight,
        layer.weight_lambda,
        layer.act_lambda,
        0.0 if norm is None else norm.eps,
        layer.options.gamma_multiplier,
        layer.options.granularity == "channel",
        output_dtype(layer, x),
        grad_input_int8,
        grad_weight_int8,
    )
    y = y.reshape(*lead, y.shape[-1])
    return y if layer.bias is None else y + layer.bias.to(y.dtype)
