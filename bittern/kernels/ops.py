"""The kernels as torch ops (namespace `bittern`), each with a fake (meta) version.

On the GPU they are `torch.library.triton_op`s whose kernels launch through `wrap_triton`
(`bittern.kernels.common.kernel_op`): torch.compile traces into them and Inductor launches
the Triton kernels from its own generated code, with no Python op dispatch per call. Under
Triton's interpreter (the CPU tests) they are opaque custom ops with the same bodies.

Every op is a pure function of its inputs. The ternary codes of a weight come in as tensors:
the ones a layer keeps (rewritten in place after each optimizer step), or, where the layer keeps
none (FSDP2), the output of `ternarize` inside the same graph. The ops that run the int8 GEMM
take its kernel as an argument (`int8_mm_kernel`, "tma" or "pointer": `bittern.kernels.int8_mm`),
so a compiled graph records the choice with the call.
"""

import torch
from torch import Tensor

from bittern.kernels import actquant, gradquant, sharednorm, weightquant
from bittern.kernels.common import kernel_op
from bittern.kernels.int8_mm import int8_mm as _int8_mm

# int32 accumulation of grad_weight over tokens stays exact below this many (|codes| <= 128 * 127)
MAX_INT8_TOKENS = 2**31 // (128 * 127)


@kernel_op("bittern::rmsnorm_quant")
def rmsnorm_quant(x: Tensor, weight: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(codes int8 (M, K), s_x (M,), rstd (M,)) of RMSNorm(x) (none if weight is None) then int8."""
    return actquant.rmsnorm_quant(x, weight, eps)


@rmsnorm_quant.register_fake
def _(x, weight, eps):
    M, K = x.shape
    f32 = torch.float32
    return x.new_empty((M, K), dtype=torch.int8), x.new_empty(M, dtype=f32), x.new_empty(M, dtype=f32)


@kernel_op("bittern::rmsnorm_quant_backward")
def rmsnorm_quant_backward(grad: Tensor, x: Tensor, weight: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    """(dx, dweight) of the RMSNorm before the quantizer (straight-through)."""
    return actquant.rmsnorm_quant_backward(grad, x, weight, rstd)


@rmsnorm_quant_backward.register_fake
def _(grad, x, weight, rstd):
    return torch.empty_like(x), torch.empty_like(weight)


@kernel_op("bittern::ternarize")
def ternarize(weight: Tensor, gamma_multiplier: float, per_channel: bool) -> tuple[Tensor, Tensor]:
    """(codes int8 (out, in), gamma (1,) or (out,)) of a weight, uncached."""
    return weightquant.ternarize_weight(weight, gamma_multiplier, per_channel)


@ternarize.register_fake
def _(weight, gamma_multiplier, per_channel):
    N, K = weight.shape
    gamma = weight.new_empty(N if per_channel else 1, dtype=torch.float32)
    return weight.new_empty((N, K), dtype=torch.int8), gamma


@kernel_op("bittern::int8_mm")
def int8_mm(
    a: Tensor,
    b: Tensor,
    row_scale: Tensor | None,
    col_scale: Tensor | None,
    out_dtype: torch.dtype,
    int8_mm_kernel: str = "tma",
) -> Tensor:
    """(a @ b^T) * col_scale / row_scale for int8 a (M, K), b (N, K); int32 without scales.

    (Not `kernel`: Inductor's fallback for a custom op takes a `kernel` argument of its own.)
    """
    return _int8_mm(a, b, row_scale, col_scale, out_dtype, kernel=int8_mm_kernel)


@int8_mm.register_fake
def _(a, b, row_scale, col_scale, out_dtype, int8_mm_kernel="tma"):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


@kernel_op("bittern::bitlinear_forward")
def bitlinear_forward(
    x: Tensor,
    norm_weight: Tensor | None,
    w_codes: Tensor,
    gamma: Tensor,
    eps: float,
    out_dtype: torch.dtype,
    int8_mm_kernel: str = "tma",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, codes, s_x, rstd): y = (int8(RMSNorm(x)) @ W_q^T) * gamma / s_x, and what backward keeps."""
    codes, scale, rstd = actquant.rmsnorm_quant(x, norm_weight, eps)
    return _int8_mm(codes, w_codes, scale, gamma, out_dtype, kernel=int8_mm_kernel), codes, scale, rstd


@bitlinear_forward.register_fake
def _(x, norm_weight, w_codes, gamma, eps, out_dtype, int8_mm_kernel="tma"):
    M, K = x.shape
    f32 = torch.float32
    y = x.new_empty((M, w_codes.shape[0]), dtype=out_dtype)
    return y, x.new_empty((M, K), dtype=torch.int8), x.new_empty(M, dtype=f32), x.new_empty(M, dtype=f32)


@kernel_op("bittern::bitlinear_grad_input")
def bitlinear_grad_input(
    grad: Tensor,
    w_codes: Tensor,
    gamma: Tensor,
    w_codes_t: Tensor | None,
    int8: bool,
    int8_mm_kernel: str = "tma",
) -> Tensor:
    """grad @ (W_q * gamma), in grad's dtype: a 16-bit GEMM, or int8 with grad quantized per row.

    `w_codes_t` (the codes transposed, K-major for the int8 GEMM) is made here when not given.
    """
    if int8:
        if w_codes_t is None:
            w_codes_t = w_codes.t().contiguous()
        g_codes, g_scale = gradquant.quantize_grad_rows(grad, gamma)
        return _int8_mm(g_codes, w_codes_t, g_scale, None, grad.dtype, kernel=int8_mm_kernel)
    return grad @ weightquant.dequantize_weight(w_codes, gamma, grad.dtype)


@bitlinear_grad_input.register_fake
def _(grad, w_codes, gamma, w_codes_t, int8, int8_mm_kernel="tma"):
    return grad.new_empty((grad.shape[0], w_codes.shape[1]))


@kernel_op("bittern::bitlinear_grad_weight")
def bitlinear_grad_weight(
    grad: Tensor,
    codes: Tensor,
    scale: Tensor,
    int8: bool,
    out_dtype: torch.dtype,
    int8_mm_kernel: str = "tma",
) -> Tensor:
    """grad^T @ (codes / s_x) as out_dtype: a 16-bit GEMM, or int8 with grad / s_x quantized per column."""
    if int8 and grad.shape[0] <= MAX_INT8_TOKENS:
        g_codes_t, g_scale = gradquant.quantize_grad_cols(grad, scale)
        return _int8_mm(g_codes_t, codes.t().contiguous(), g_scale, None, out_dtype, kernel=int8_mm_kernel)
    x = actquant.dequantize_rows(codes, scale, grad.dtype)
    return (grad.t() @ x).to(out_dtype)


@bitlinear_grad_weight.register_fake
def _(grad, codes, scale, int8, out_dtype, int8_mm_kernel="tma"):
    return grad.new_empty((grad.shape[1], codes.shape[1]), dtype=out_dtype)


@kernel_op("bittern::bitlinear_grad_weight_shared")
def bitlinear_grad_weight_shared(
    grads: list[Tensor],
    codes: Tensor,
    scale: Tensor,
    int8: bool,
    out_dtype: torch.dtype,
    int8_mm_kernel: str = "tma",
) -> list[Tensor]:
    """`bitlinear_grad_weight` of each grad against one set of activation codes (layers sharing an
    input): the dequantized activations (or the transposed codes, int8) made once for all."""
    if int8 and codes.shape[0] <= MAX_INT8_TOKENS:
        codes_t = codes.t().contiguous()
        outs = []
        for grad in grads:
            g_codes_t, g_scale = gradquant.quantize_grad_cols(grad, scale)
            outs.append(_int8_mm(g_codes_t, codes_t, g_scale, None, out_dtype, kernel=int8_mm_kernel))
        return outs
    x = actquant.dequantize_rows(codes, scale, grads[0].dtype)
    return [(grad.t() @ x).to(out_dtype) for grad in grads]


@bitlinear_grad_weight_shared.register_fake
def _(grads, codes, scale, int8, out_dtype, int8_mm_kernel="tma"):
    return [g.new_empty((g.shape[1], codes.shape[1]), dtype=out_dtype) for g in grads]


@kernel_op("bittern::bitlinear_group_forward")
def bitlinear_group_forward(
    x: Tensor,
    norm_weights: list[Tensor],
    w_codes: list[Tensor],
    gammas: list[Tensor],
    eps: float,
    out_dtype: torch.dtype,
    int8_mm_kernel: str = "tma",
) -> list[Tensor]:
    """`bitlinear_forward` of 2-3 layers on one input, their norms in one pass: [y...] + [codes...]
    + [s_x...] + [rstd]."""
    codes, scales, rstd = sharednorm.rmsnorm_quant_group(x, norm_weights, eps)
    ys = [
        _int8_mm(c, wc, s, g, out_dtype, kernel=int8_mm_kernel)
        for c, wc, s, g in zip(codes, w_codes, scales, gammas, strict=True)
    ]
    return ys + codes + scales + [rstd]


@bitlinear_group_forward.register_fake
def _(x, norm_weights, w_codes, gammas, eps, out_dtype, int8_mm_kernel="tma"):
    M, K = x.shape
    f32 = torch.float32
    ys = [x.new_empty((M, wc.shape[0]), dtype=out_dtype) for wc in w_codes]
    codes = [x.new_empty((M, K), dtype=torch.int8) for _ in w_codes]
    scales = [x.new_empty(M, dtype=f32) for _ in w_codes]
    return ys + codes + scales + [x.new_empty(M, dtype=f32)]


@kernel_op("bittern::rmsnorm_quant_group")
def rmsnorm_quant_group(x: Tensor, norm_weights: list[Tensor], eps: float) -> list[Tensor]:
    """[codes...] + [s_x...] + [rstd] of x for each norm weight: `bitlinear_group_forward`'s norm pass."""
    codes, scales, rstd = sharednorm.rmsnorm_quant_group(x, norm_weights, eps)
    return codes + scales + [rstd]


@rmsnorm_quant_group.register_fake
def _(x, norm_weights, eps):
    M, K = x.shape
    f32 = torch.float32
    codes = [x.new_empty((M, K), dtype=torch.int8) for _ in norm_weights]
    return codes + [x.new_empty(M, dtype=f32) for _ in norm_weights] + [x.new_empty(M, dtype=f32)]


@kernel_op("bittern::rmsnorm_quant_group_backward")
def rmsnorm_quant_group_backward(
    grads: list[Tensor], x: Tensor, norm_weights: list[Tensor], rstd: Tensor
) -> list[Tensor]:
    """[dx] + [dweight...] of the shared norm pass (dx summed over the layers)."""
    dx, dws = sharednorm.rmsnorm_quant_group_backward(grads, x, norm_weights, rstd)
    return [dx, *dws]


@rmsnorm_quant_group_backward.register_fake
def _(grads, x, norm_weights, rstd):
    return [torch.empty_like(x)] + [torch.empty_like(w) for w in norm_weights]
