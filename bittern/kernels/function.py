"""BitLinear at lambda = 1 as one autograd.Function over the ops of `bittern.kernels.ops`.

Forward (`bitlinear_forward`): fused RMSNorm + int8 quantization of x, then the int8 GEMM
against the ternary codes with gamma / s_x applied in the epilogue. Saved for backward: the
weight's codes and gamma (held by the layer anyway), and, with a norm, x and rstd only: the
backward needs x for the norm's gradient, and it recomputes the activation codes and s_x from
x with the same kernel (bit-identical) where grad_weight needs them, instead of keeping them
alive from forward to backward (`recompute_codes=False` saves them: one pass less in the
backward, one byte per input element more held). Without a norm the codes and s_x are saved
(one byte per element, less than x). Backward, straight-through like the reference:
grad_input through W_q * gamma, then the norm's backward; grad_weight = grad^T @ (codes / s_x).
Numerically it is the reference layer with one difference: the forward product is exact
(int32) where the reference rounds its operands to the autocast dtype.

Everything here takes tensors and plain settings: the weight's codes and gamma come in as
arguments (the layer keeps and refreshes them, `bittern.nn.fastpath`; or `ternarize` made them
in the same graph), so a compiled graph takes them as inputs.
"""

from __future__ import annotations

import torch

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
        w_codes: torch.Tensor,
        gamma: torch.Tensor,
        w_codes_t: torch.Tensor | None,
        eps: float,
        out_dtype: torch.dtype,
        grad_input_int8: bool,
        grad_weight_int8: bool,
        recompute_codes: bool = True,
        int8_mm_kernel: str = "tma",
    ) -> torch.Tensor:
        y, codes, scale, rstd = ops.bitlinear_forward(
            x, norm_weight, w_codes, gamma, eps, out_dtype, int8_mm_kernel
        )
        if norm_weight is None:  # the codes (1 byte per element) are all the backward needs of x
            saved = (None, None, w_codes, gamma, w_codes_t, codes, scale, rstd)
        elif recompute_codes:  # x is needed anyway (the norm's backward); the codes come from it again
            saved = (x, norm_weight, w_codes, gamma, w_codes_t, None, None, rstd)
        else:
            saved = (x, norm_weight, w_codes, gamma, w_codes_t, codes, scale, rstd)
        ctx.save_for_backward(*saved)
        ctx.dtypes = (x.dtype, weight.dtype)
        ctx.options = (grad_input_int8, grad_weight_int8, eps, int8_mm_kernel)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, norm_weight, w_codes, gamma, w_codes_t, codes, scale, rstd = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        grad_input_int8, grad_weight_int8, eps, kernel = ctx.options
        grad = grad.contiguous()
        dx = dnorm = dweight = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            dy = ops.bitlinear_grad_input(grad, w_codes, gamma, w_codes_t, grad_input_int8, kernel)
            if norm_weight is None:
                dx = dy.to(x_dtype)
            else:
                dx, dnorm = ops.rmsnorm_quant_backward(dy, x, norm_weight, rstd)
        if ctx.needs_input_grad[2]:
            if codes is None:  # recomputed as the forward made them: the same kernel on the same x
                codes, scale, _ = ops.rmsnorm_quant(x, norm_weight, eps)
            dweight = ops.bitlinear_grad_weight(grad, codes, scale, grad_weight_int8, w_dtype, kernel)
        return dx, dnorm, dweight, None, None, None, None, None, None, None, None, None


def output_dtype(x: torch.Tensor, norm_weight: torch.Tensor | None) -> torch.dtype:
    """The dtype the reference layer's F.linear returns: autocast's, else the norm's output dtype."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype if norm_weight is None else torch.promote_types(norm_weight.dtype, x.dtype)


def ternarize(
    weight: torch.Tensor, gamma_multiplier: float, per_channel: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8, gamma float32 (1,) or (out,)) of a weight, fresh (inside a compiled graph too)."""
    return ops.ternarize(weight.detach(), gamma_multiplier, per_channel)


def bitlinear(
    x: torch.Tensor,
    weight: torch.Tensor,
    codes: torch.Tensor,
    gamma: torch.Tensor,
    codes_t: torch.Tensor | None,
    norm_weight: torch.Tensor | None,
    eps: float,
    grad_input_int8: bool = False,
    grad_weight_int8: bool = False,
    recompute_codes: bool = True,
    int8_mm_kernel: str = "tma",
) -> torch.Tensor:
    """x (..., in) through RMSNorm (if `norm_weight`), int8 activations and the ternary `codes` * gamma.

    `weight` is the latent weight the gradient goes to; `codes_t` (the codes transposed, for the
    int8 grad_input) is made in the backward when None. `recompute_codes`: with a norm, the
    backward makes the activation codes again from x instead of saving them. `int8_mm_kernel`:
    the int8 GEMM's kernel on Hopper, "tma" or "pointer" (`bittern.kernels.int8_mm`). No bias:
    the caller adds it.
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    y = BitLinearFunction.apply(
        x2,
        norm_weight,
        weight,
        codes,
        gamma,
        codes_t,
        eps,
        output_dtype(x, norm_weight),
        grad_input_int8,
        grad_weight_int8,
        recompute_codes,
        int8_mm_kernel,
    )
    return y.reshape(*lead, y.shape[-1])


class BitLinearGroupFunction(torch.autograd.Function):
    """BitLinearFunction for 2-3 layers reading one 2-D x: their norms in one pass both ways.

    Called as apply(settings, x, *norm_weights, *weights, *w_codes, *gammas, *w_codes_t) with
    settings = (number of layers, eps, out_dtype, grad_input_int8, grad_weight_int8, weight dtypes,
    recompute_codes, int8_mm_kernel). With `recompute_codes` only x and rstd of the activations are saved; the
    backward makes every layer's codes and s_x again from x in one shared pass (bit-identical).
    """

    @staticmethod
    def forward(ctx, settings: tuple, x: torch.Tensor, *tensors):
        n, eps, out_dtype = settings[:3]
        norm_weights, _, w_codes, gammas, w_codes_t = (list(tensors[i * n : (i + 1) * n]) for i in range(5))
        outs = ops.bitlinear_group_forward(x, norm_weights, w_codes, gammas, eps, out_dtype, settings[7])
        ys, codes, scales, rstd = outs[:n], outs[n : 2 * n], outs[2 * n : 3 * n], outs[3 * n]
        kept = [] if settings[6] else [*codes, *scales]  # recompute_codes: none kept
        ctx.save_for_backward(x, rstd, *norm_weights, *w_codes, *gammas, *w_codes_t, *kept)
        ctx.settings = settings
        return tuple(ys)

    @staticmethod
    def backward(ctx, *grads):
        n, eps, out_dtype, grad_input_int8, grad_weight_int8, w_dtypes, recompute_codes, kernel = ctx.settings
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
                ops.bitlinear_grad_input(g, w_codes[i], gammas[i], w_codes_t[i], grad_input_int8, kernel)
                for i, g in enumerate(grads)
            ]
            dx, *dnorms = ops.rmsnorm_quant_group_backward(dys, x, list(norm_weights), rstd)
            del dys
        if recompute_codes and any(ctx.needs_input_grad[2 + n : 2 + 2 * n]):
            # as the forward made them: the same shared pass over the same x
            remade = ops.rmsnorm_quant_group(x, list(norm_weights), eps)
            codes, scales = remade[:n], remade[n : 2 * n]
        dweights = [
            ops.bitlinear_grad_weight(g, codes[i], scales[i], grad_weight_int8, w_dtypes[i], kernel)
            if ctx.needs_input_grad[2 + n + i]
            else None
            for i, g in enumerate(grads)
        ]
        return None, dx, *dnorms, *dweights, *([None] * (3 * n))


def bitlinear_group(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    codes: list[torch.Tensor],
    gammas: list[torch.Tensor],
    codes_t: list[torch.Tensor | None],
    norm_weights: list[torch.Tensor],
    eps: float,
    grad_input_int8: bool = False,
    grad_weight_int8: bool = False,
    recompute_codes: bool = True,
    int8_mm_kernel: str = "tma",
) -> list[torch.Tensor]:
    """`bitlinear` of 2-3 layers (each with a norm, one eps) on the same x, their norms in one pass."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    settings = (
        len(weights),
        eps,
        output_dtype(x, norm_weights[0]),
        grad_input_int8,
        grad_weight_int8,
        tuple(w.dtype for w in weights),
        recompute_codes,
        int8_mm_kernel,
    )
    ys = BitLinearGroupFunction.apply(settings, x2, *norm_weights, *weights, *codes, *gammas, *codes_t)
    return [y.reshape(*lead, y.shape[-1]) for y in ys]


class BitLinearSharedFunction(torch.autograd.Function):
    """1-3 BitLinears without norms of their own reading one 2-D x through one shared RMSNorm.

    The sub-layer norm placement (BitNet b1.58 2B): the block's RMSNorm feeds q/k/v (or gate/up),
    a sub-norm feeds o_proj (or down_proj). One norm weight, so one set of activation codes and
    s_x serves every layer: one norm + quantize pass forward (none without a norm weight: the
    quantizer alone), and one backward pass writing dx and the norm weight's gradient from every
    layer's input gradient. Called as apply(settings, x, norm_weight or None, *weights, *w_codes,
    *gammas, *w_codes_t) with settings = (number of layers, eps, out_dtype, grad_input_int8,
    grad_weight_int8, weight dtypes, recompute_codes, int8_mm_kernel). Saved as BitLinearFunction
    saves: with a norm, x and rstd (and the codes and s_x unless `recompute_codes`); without, the
    codes and s_x. The weights' gradients read one dequantized copy of the shared codes (one
    transposed copy on int8), not one each.
    """

    @staticmethod
    def forward(ctx, settings: tuple, x: torch.Tensor, norm_weight: torch.Tensor | None, *tensors):
        n, eps, out_dtype, recompute_codes = settings[0], settings[1], settings[2], settings[6]
        _, w_codes, gammas, w_codes_t = (list(tensors[i * n : (i + 1) * n]) for i in range(4))
        codes, scale, rstd = ops.rmsnorm_quant(x, norm_weight, eps)
        ys = [
            ops.int8_mm(codes, wc, scale, g, out_dtype, settings[7])
            for wc, g in zip(w_codes, gammas, strict=True)
        ]
        if norm_weight is None:  # the codes (1 byte per element) are all the backward needs of x
            acts = (None, None, codes, scale)
        elif recompute_codes:  # x is needed anyway (the norm's backward); the codes come from it again
            acts = (x, rstd, None, None)
        else:
            acts = (x, rstd, codes, scale)
        ctx.save_for_backward(*acts, norm_weight, *w_codes, *gammas, *w_codes_t)
        ctx.settings = settings
        ctx.x_dtype = x.dtype
        return tuple(ys)

    @staticmethod
    def backward(ctx, *grads):
        n, eps, out_dtype, grad_input_int8, grad_weight_int8, w_dtypes, _, kernel = ctx.settings
        x, rstd, codes, scale, norm_weight, *saved = ctx.saved_tensors
        w_codes, gammas, w_codes_t = (saved[i * n : (i + 1) * n] for i in range(3))
        rows = (x if codes is None else codes).shape[0]
        # an output nobody used gets no gradient: zeros stand in
        grads = [
            torch.zeros((rows, c.shape[0]), dtype=out_dtype, device=c.device) if g is None else g.contiguous()
            for g, c in zip(grads, w_codes, strict=True)
        ]
        dx = dnorm = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dys = [
                ops.bitlinear_grad_input(g, w_codes[i], gammas[i], w_codes_t[i], grad_input_int8, kernel)
                for i, g in enumerate(grads)
            ]
            if norm_weight is None:  # the quantizer passes the gradient straight through
                dx = (dys[0] if n == 1 else torch.stack([d.float() for d in dys]).sum(0)).to(ctx.x_dtype)
            elif n == 1:
                dx, dnorm = ops.rmsnorm_quant_backward(dys[0], x, norm_weight, rstd)
            else:  # the group pass with the one weight in every slot: dx summed in float32 once
                dx, *dnorms = ops.rmsnorm_quant_group_backward(dys, x, [norm_weight] * n, rstd)
                dnorm = torch.stack([d.float() for d in dnorms]).sum(0).to(norm_weight.dtype)
            del dys
        if codes is None and any(ctx.needs_input_grad[3 : 3 + n]):
            codes, scale, _ = ops.rmsnorm_quant(x, norm_weight, eps)  # as the forward made them
        wanted = [i for i in range(n) if ctx.needs_input_grad[3 + i]]
        dweights = [None] * n
        if len(wanted) > 1 and len({w_dtypes[i] for i in wanted}) == 1:  # one dequantized x for all
            made = ops.bitlinear_grad_weight_shared(
                [grads[i] for i in wanted], codes, scale, grad_weight_int8, w_dtypes[wanted[0]], kernel
            )
            for i, dw in zip(wanted, made, strict=True):
                dweights[i] = dw
        else:
            for i in wanted:
                dweights[i] = ops.bitlinear_grad_weight(
                    grads[i], codes, scale, grad_weight_int8, w_dtypes[i], kernel
                )
        return None, dx, dnorm, *dweights, *([None] * (3 * n))


def bitlinear_shared(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    codes: list[torch.Tensor],
    gammas: list[torch.Tensor],
    codes_t: list[torch.Tensor | None],
    norm_weight: torch.Tensor | None,
    eps: float,
    grad_input_int8: bool = False,
    grad_weight_int8: bool = False,
    recompute_codes: bool = True,
    int8_mm_kernel: str = "tma",
) -> list[torch.Tensor]:
    """`bitlinear` of 1-3 norm-free layers on RMSNorm(x) (one `norm_weight`, or none): one shared pass.

    Each output equals `bitlinear(rmsnorm(x), ..., None, ...)` of its layer, where `rmsnorm` is
    `bittern.nn.RMSNorm`'s forward; the codes of the normalized x are made once for all layers.
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    settings = (
        len(weights),
        eps,
        output_dtype(x, norm_weight),
        grad_input_int8,
        grad_weight_int8,
        tuple(w.dtype for w in weights),
        recompute_codes,
        int8_mm_kernel,
    )
    ys = BitLinearSharedFunction.apply(settings, x2, norm_weight, *weights, *codes, *gammas, *codes_t)
    return [y.reshape(*lead, y.shape[-1]) for y in ys]
