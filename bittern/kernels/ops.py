"""The kernels registered as torch custom ops (namespace `bittern`), each with a fake (meta) version.

torch.compile treats each op as one opaque node, so the fused BitLinear compiles without graph
breaks. The weight-reading ops take the latent weight and look its ternary codes up in
`WEIGHT_CACHE` inside the op: cached tensors never leave an op, so the compiler cannot alias
or reuse them. Those ops are tagged cudagraph-unsafe (the cache check is host code that a
CUDA-graph replay would skip).
"""

import torch
from torch import Tensor

from bittern.kernels import actquant, gradquant, weightquant
from bittern.kernels.dispatch import HOST_SCALARS
from bittern.kernels.int8_mm import int8_mm as _int8_mm
from bittern.kernels.weightquant import WEIGHT_CACHE

_UNSAFE = (torch.Tag.cudagraph_unsafe,) if hasattr(torch.Tag, "cudagraph_unsafe") else ()
# int32 accumulation of grad_weight over tokens stays exact below this many (|codes| <= 128 * 127)
MAX_INT8_TOKENS = 2**31 // (128 * 127)


@torch.library.custom_op("bittern::rmsnorm_quant", mutates_args=())
def rmsnorm_quant(x: Tensor, weight: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(codes int8 (M, K), s_x (M,), rstd (M,)) of RMSNorm(x) (none if weight is None) then int8."""
    return actquant.rmsnorm_quant(x, weight, eps)


@rmsnorm_quant.register_fake
def _(x, weight, eps):
    M, K = x.shape
    f32 = torch.float32
    return x.new_empty((M, K), dtype=torch.int8), x.new_empty(M, dtype=f32), x.new_empty(M, dtype=f32)


@torch.library.custom_op("bittern::rmsnorm_quant_backward", mutates_args=())
def rmsnorm_quant_backward(grad: Tensor, x: Tensor, weight: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    """(dx, dweight) of the RMSNorm before the quantizer (straight-through)."""
    return actquant.rmsnorm_quant_backward(grad, x, weight, rstd)


@rmsnorm_quant_backward.register_fake
def _(grad, x, weight, rstd):
    return torch.empty_like(x), torch.empty_like(weight)


@torch.library.custom_op("bittern::ternarize", mutates_args=())
def ternarize(weight: Tensor, gamma_multiplier: float, per_channel: bool) -> tuple[Tensor, Tensor]:
    """(codes int8 (out, in), gamma (1,) or (out,)) of a weight, uncached."""
    return weightquant.ternarize_weight(weight, gamma_multiplier, per_channel)


@ternarize.register_fake
def _(weight, gamma_multiplier, per_channel):
    N, K = weight.shape
    gamma = weight.new_empty(N if per_channel else 1, dtype=torch.float32)
    return weight.new_empty((N, K), dtype=torch.int8), gamma


@torch.library.custom_op("bittern::int8_mm", mutates_args=())
def int8_mm(
    a: Tensor, b: Tensor, row_scale: Tensor | None, col_scale: Tensor | None, out_dtype: torch.dtype
) -> Tensor:
    """(a @ b^T) * col_scale / row_scale for int8 a (M, K), b (N, K); int32 without scales."""
    return _int8_mm(a, b, row_scale, col_scale, out_dtype)


@int8_mm.register_fake
def _(a, b, row_scale, col_scale, out_dtype):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


@torch.library.custom_op("bittern::ternary_linear", mutates_args=(), tags=_UNSAFE)
def ternary_linear(
    codes: Tensor,
    scale: Tensor,
    weight: Tensor,
    weight_lambda: Tensor,
    act_lambda: Tensor,
    gamma_multiplier: float,
    per_channel: bool,
    out_dtype: torch.dtype,
) -> Tensor:
    """y = (codes @ W_q^T) * gamma / s_x, W_q and gamma from the cached ternarized `weight`."""
    if HOST_SCALARS.value(weight_lambda) != 1.0 or HOST_SCALARS.value(act_lambda) != 1.0:
        raise RuntimeError(
            "bittern's fused kernels run only at progressive-quantization lambda = 1; after changing "
            "lambda on a compiled model, call bittern.kernels.configure(model) before the next step"
        )
    w_codes, gamma, _ = WEIGHT_CACHE.lookup(weight, gamma_multiplier, per_channel)
    return _int8_mm(codes, w_codes, scale, gamma, out_dtype)


@ternary_linear.register_fake
def _(codes, scale, weight, weight_lambda, act_lambda, gamma_multiplier, per_channel, out_dtype):
    return codes.new_empty((codes.shape[0], weight.shape[0]), dtype=out_dtype)


@torch.library.custom_op("bittern::ternary_linear_grad_input", mutates_args=(), tags=_UNSAFE)
def ternary_linear_grad_input(
    grad: Tensor, weight: Tensor, gamma_multiplier: float, per_channel: bool, int8: bool
) -> Tensor:
    """grad @ (W_q * gamma), in grad's dtype: a 16-bit GEMM, or int8 with grad quantized per row."""
    transposed = int8
    w_codes, gamma, w_codes_t = WEIGHT_CACHE.lookup(weight, gamma_multiplier, per_channel, transposed)
    if int8:
        g_codes, g_scale = gradquant.quantize_grad_rows(grad, gamma)
        return _int8_mm(g_codes, w_codes_t, g_scale, None, grad.dtype)
    return grad @ weightquant.dequantize_weight(w_codes, gamma, grad.dtype)


@ternary_linear_grad_input.register_fake
def _(grad, weight, gamma_multiplier, per_channel, int8):
    return grad.new_empty((grad.shape[0], weight.shape[1]))


@torch.library.custom_op("bittern::ternary_linear_grad_weight", mutates_args=())
def ternary_linear_grad_weight(
    grad: Tensor, codes: Tensor, scale: Tensor, int8: bool, out_dtype: torch.dtype
) -> Tensor:
    """grad^T @ (codes / s_x) as out_dtype: a 16-bit GEMM, or int8 with grad / s_x quantized per column."""
    if int8 and grad.shape[0] <= MAX_INT8_TOKENS:
        g_codes_t, g_scale = gradquant.quantize_grad_cols(grad, scale)
        return _int8_mm(g_codes_t, codes.t().contiguous(), g_scale, None, out_dtype)
    x = actquant.dequantize_rows(codes, scale, grad.dtype)
    return (grad.t() @ x).to(out_dtype)


@ternary_linear_grad_weight.register_fake
def _(grad, codes, scale, int8, out_dtype):
    return grad.new_empty((grad.shape[1], codes.shape[1]), dtype=out_dtype)
