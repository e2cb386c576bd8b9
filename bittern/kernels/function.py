"""BitLinear at lambda = 1 as one autograd.Function over the ops of `bittern.kernels.ops`.

Forward (`bitlinear_forward`): fused RMSNorm + int8 quantization of x, then the int8 GEMM
against the ternary codes with gamma / s_x applied in the epilogue. Saved for backward: x
(only for the norm's backward), the int8 codes and s_x (not a 16-bit copy of the
activation), rstd, and the weight's codes. Backward, straight-through like the reference:
grad_input through W_q * gamma, then the norm's backward; grad_weight = grad^T @ (codes / s_x).
Numerically it is the reference layer with one difference: the forward product is exact
(int32) where the reference rounds its operands to the autocast dtype.

The weight's codes come from `WEIGHT_CACHE` (one ternarization per optimizer step), bound to
the layer so that a compiled graph takes them as inputs; with the cache off (FSDP2), from
`ternarize` inside the forward.
"""

from __future__ import annotations

import torch
from torch import nn

import bittern.kernels.ops  # noqa: F401  (registers torch.ops.bittern.*)
from bittern.kernels.dispatch import CODES_ATTR, lambdas_are_one
from bittern.kernels.weightcache import WEIGHT_CACHE

ops = torch.ops.bittern


class BitLinearFunction(torch.autograd.Function):
    """y = (x_q @ W_q^T) * gamma / s_x for 2-D x, with the straight-through gradients."""

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        norm_weight: torch.Tensor | None,
        weight: torch.Tensor,
        w_codes: torch.Tensor,
        gamma: torch.Tensor,
        w_codes_t: torch.Tensor | None,
        eps: float,
        out_dtype: torch.dtype,
        grad_input_int8: bool,
        grad_weight_int8: bool,
    ) -> torch.Tensor:
        y, codes, scale, rstd = ops.bitlinear_forward(x, norm_weight, w_codes, gamma, eps, out_dtype)
        x_saved = x if norm_weight is not None else None
        ctx.save_for_backward(x_saved, norm_weight, w_codes, gamma, w_codes_t, codes, scale, rstd)
        ctx.dtypes = (x.dtype, weight.dtype)
        ctx.options = (grad_input_int8, grad_weight_int8)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, norm_weight, w_codes, gamma, w_codes_t, codes, scale, rstd = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        grad_input_int8, grad_weight_int8 = ctx.options
        grad = grad.contiguous()
        dx = dnorm = dweight = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            dy = ops.bitlinear_grad_input(grad, w_codes, gamma, w_codes_t, grad_input_int8)
            if norm_weight is None:
                dx = dy.to(x_dtype)
            else:
                dx, dnorm = ops.rmsnorm_quant_backward(dy, x, norm_weight, rstd)
        if ctx.needs_input_grad[2]:
            dweight = ops.bitlinear_grad_weight(grad, codes, scale, grad_weight_int8, w_dtype)
        return dx, dnorm, dweight, None, None, None, None, None, None, None


def output_dtype(layer: nn.Module, x: torch.Tensor) -> torch.dtype:
    """The dtype the reference path's F.linear returns: autocast's, else the norm's output dtype."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype if layer.norm is None else torch.promote_types(layer.norm.weight.dtype, x.dtype)


def weight_codes(
    layer: nn.Module, transposed: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(codes, gamma, codes^T or None) of `layer.weight`: cached and bound to the layer, or fresh.

    Eagerly the cache is asked on every call (it refreshes codes whose weight changed) and the
    answer bound to the layer; a compiled graph reads the bound tensors (refreshed in place
    after every optimizer step; `bittern.kernels.refresh` re-checks them after other writes).
    """
    o = layer.options
    per_channel = o.granularity == "channel"
    if not WEIGHT_CACHE.enabled:
        codes, gamma = ops.ternarize(layer.weight.detach(), o.gamma_multiplier, per_channel)
        return codes, gamma, None
    bound = getattr(layer, CODES_ATTR, None)
    if torch.compiler.is_compiling():
        if bound is None or (transposed and bound[2] is None):  # never run eagerly nor configured
            codes, gamma = ops.ternarize(layer.weight.detach(), o.gamma_multiplier, per_channel)
            return codes, gamma, None
        return bound
    bound = WEIGHT_CACHE.lookup(layer.weight, o.gamma_multiplier, per_channel, transposed)
    setattr(layer, CODES_ATTR, bound)
    return bound


def _check_lambda(layer: nn.Module) -> None:
    """Refuse a layer whose progressive-quantization lambda is not 1 (the kernels compute lambda = 1)."""
    if not lambdas_are_one(layer):
        raise RuntimeError(
            "bittern's fused kernels run only at progressive-quantization lambda = 1; after writing "
            "lambda other than through BitLinear.set_lambda, call bittern.kernels.configure(model)"
        )


def bitlinear_fast(
    layer: nn.Module, x: torch.Tensor, grad_input_int8: bool = False, grad_weight_int8: bool = False
) -> torch.Tensor:
    """BitLinear `layer` applied to x (..., in_features) through `BitLinearFunction` (lambda must be 1)."""
    _check_lambda(layer)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    norm = layer.norm
    w_codes, gamma, w_codes_t = weight_codes(layer, grad_input_int8)
    y = BitLinearFunction.apply(
        x2,
        None if norm is None else norm.weight,
        layer.weight,
        w_codes,
        gamma,
        w_codes_t,
        0.0 if norm is None else norm.eps,
        output_dtype(layer, x),
        grad_input_int8,
        grad_weight_int8,
    )
    y = y.reshape(*lead, y.shape[-1])
    return y if layer.bias is None else y + layer.bias.to(y.dtype)


class BitLinearGroupFunction(torch.autograd.Function):
    """BitLinearFunction for 2-3 layers reading one 2-D x: their norms in one pass both ways.

    Called as apply(settings, x, *norm_weights, *weights, *w_codes, *gammas, *w_codes_t) with
    settings = (number of layers, eps, out_dtype, grad_input_int8, grad_weight_int8, weight dtypes).
    """

    @staticmethod
    def forward(ctx, settings: tuple, x: torch.Tensor, *tensors):
        n, eps, out_dtype = settings[:3]
        norm_weights, _, w_codes, gammas, w_codes_t = (list(tensors[i * n : (i + 1) * n]) for i in range(5))
        outs = ops.bitlinear_group_forward(x, norm_weights, w_codes, gammas, eps, out_dtype)
        ys, codes, scales, rstd = outs[:n], outs[n : 2 * n], outs[2 * n : 3 * n], outs[3 * n]
        ctx.save_for_backward(x, rstd, *norm_weights, *w_codes, *gammas, *w_codes_t, *codes, *scales)
        ctx.settings = settings
        return tuple(ys)

    @staticmethod
    def backward(ctx, *grads):
        n, _, out_dtype, grad_input_int8, grad_weight_int8, w_dtypes = ctx.settings
        x, rstd, *saved = ctx.saved_tensors
        norm_weights, w_codes, gammas, w_codes_t, codes, scales = (
            saved[i * n : (i + 1) * n] for i in range(6)
        )
        # an output nobody used gets no gradient: zeros stand in
        grads = [
            x.new_zeros((x.shape[0], w.shape[0]), dtype=out_dtype) if g is None else g.contiguous()
            for g, w in zip(grads, w_codes, strict=True)
        ]
        dx = dweights = None
        dnorms = [None] * n
        if any(ctx.needs_input_grad[1 : 2 + n]):
            dys = [
                ops.bitlinear_grad_input(g, w_codes[i], gammas[i], w_codes_t[i], grad_input_int8)
                for i, g in enumerate(grads)
            ]
            dx, *dnorms = ops.rmsnorm_quant_group_backward(dys, x, list(norm_weights), rstd)
        dweights = [
            ops.bitlinear_grad_weight(g, codes[i], scales[i], grad_weight_int8, w_dtypes[i])
            if ctx.needs_input_grad[2 + n + i]
            else None
            for i, g in enumerate(grads)
        ]
        return None, dx, *dnorms, *dweights, *([None] * (3 * n))


def bitlinear_group_fast(
    layers: list[nn.Module], x: torch.Tensor, grad_input_int8: bool = False, grad_weight_int8: bool = False
) -> list[torch.Tensor]:
    """Each BitLinear of `layers` (2-3, each with a norm, same eps) applied to the same x, fused."""
    for layer in layers:
        _check_lambda(layer)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    codes = [weight_codes(layer, grad_input_int8) for layer in layers]
    settings = (
        len(layers),
        layers[0].norm.eps,
        output_dtype(layers[0], x),
        grad_input_int8,
        grad_weight_int8,
        tuple(layer.weight.dtype for layer in layers),
    )
    tensors = [layer.norm.weight for layer in layers] + [layer.weight for layer in layers]
    tensors += [c[0] for c in codes] + [c[1] for c in codes] + [c[2] for c in codes]
    ys = BitLinearGroupFunction.apply(settings, x2, *tensors)
    out = []
    for layer, y in zip(layers, ys, strict=True):
        y = y.reshape(*lead, y.shape[-1])
        out.append(y if layer.bias is None else y + layer.bias.to(y.dtype))
    return out
