"""Ternary x int8 matmuls on 2-bit packed weights, the codes decoded in registers (W2A8 inference).

y = (x_q @ codes^T) * gamma / s_x (+ bias): `bittern.nn.TernaryLinear`'s math, with the optional
RMSNorm inside the layer in front, the activations quantized per token to int8 as training does
(`bittern.quant.quantize_activations`), the product summed exactly in int32 and gamma / s_x
applied in the float32 epilogue.

Weight layout (`pack_words`): int32 words (N, ceil(K / 16)); code k of row n sits in word k // 16
at bits 2 * (k % 16), stored as code + 1 (the padding of the last word decodes to -1 and meets
zero activations). A row of K codes takes K / 4 bytes.

Two kernels compute it:

- `_gemv_kernel` for decoding (a few tokens): one program per (block of output rows, token);
  each program normalizes and quantizes its token's row itself (the row is small and in cache),
  so one launch does norm, quantization, product and rescale;
- `_quant_kernel` + `_gemm_kernel` for prefill and large batches: the activations are quantized
  once, then an int8 tensor-core GEMM reads the packed weight tile by tile.

`ternary_linear` picks one by the token count; it takes tensors only. Importing this module
imports Triton; under `TRITON_INTERPRET=1` the kernels run on CPU tensors (the tests), which is
why rounding, casts and the int8 quantization take the interpreter-safe forms of
`bittern.kernels.common` and every loop bound is a `tl.constexpr`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bittern.kernels.common import (
    INTERPRET,
    absmax_quantize,
    kernel_op,
    launch,
    round_half_even,
    round_to,
    row_warps,
    tl_dtype,
)
from bittern.quant.core import quantize_activations

CODES_PER_WORD = 16
GEMV_MAX_TOKENS = 16  # up to this many tokens per call take the GEMV kernel

# ---- layout and reference --------------------------------------------------------------


def pack_words(codes: torch.Tensor) -> torch.Tensor:
    """Ternary codes (N, K) int8 -> int32 words (N, ceil(K / 16)), code k at bits 2 * (k % 16)."""
    n, k = codes.shape
    d = (codes.to(torch.int64) + 1).clamp(0, 3)
    pad = -k % CODES_PER_WORD
    if pad:
        d = torch.cat([d, d.new_zeros(n, pad)], dim=1)
    shifts = 2 * torch.arange(CODES_PER_WORD, device=codes.device, dtype=torch.int64)
    words = (d.view(n, -1, CODES_PER_WORD) << shifts).sum(dim=-1)
    words = torch.where(words >= 2**31, words - 2**32, words)  # the same 32 bits, as int32
    return words.to(torch.int32).contiguous()


def unpack_words(words: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of `pack_words`: int8 codes (N, k)."""
    shifts = 2 * torch.arange(CODES_PER_WORD, device=words.device, dtype=torch.int32)
    d = (words.unsqueeze(-1) >> shifts) & 3
    return (d.reshape(words.shape[0], -1)[:, :k] - 1).to(torch.int8)


def norm_reference(x: torch.Tensor, norm_weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """`bittern.nn.RMSNorm` (float32 statistics, cast back, times the weight), or x without a weight."""
    if norm_weight is None:
        return x
    xf = x.float()
    return norm_weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def ternary_linear_reference(
    x: torch.Tensor,
    words: torch.Tensor,
    scale: torch.Tensor,
    norm_weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """What the kernels compute, in PyTorch: norm, int8 quantization, exact integer product
    (float64 holds it exactly), then * scale / s_x (+ bias) in float32, cast to x's dtype.

    `scale` is gamma per output row (N,); x is (M, K).
    """
    k = x.shape[-1]
    xq, s_x = quantize_activations(norm_reference(x, norm_weight, eps))
    acc = (xq.double() @ unpack_words(words, k).double().t()).float()
    y = acc * scale / s_x
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


# ---- kernels ---------------------------------------------------------------------------


@triton.jit
def _normed(
    xf,
    W,
    offs,
    mask,
    rstd,
    HAS_NORM: tl.constexpr,
    X_DTYPE: tl.constexpr,
    Y_DTYPE: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """RMSNorm's output (as float32) at `offs`: weight * (x * rstd) rounded as torch rounds it."""
    if HAS_NORM:
        w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
        xn = round_to(xf * rstd, X_DTYPE, INTERPRET).to(tl.float32)
        return round_to(w * xn, Y_DTYPE, INTERPRET).to(tl.float32)
    else:
        return xf


@triton.jit
def _row_scale(
    X_ROW,
    W,
    K: tl.constexpr,
    eps,
    HAS_NORM: tl.constexpr,
    X_DTYPE: tl.constexpr,
    Y_DTYPE: tl.constexpr,
    BLOCK_ROW: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """rstd and s_x = 127 / max|y| of one token's row, read whole (BLOCK_ROW >= K)."""
    offs = tl.arange(0, BLOCK_ROW)
    mask = offs < K
    xf = tl.load(X_ROW + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0
    if HAS_NORM:
        rstd = tl.math.rsqrt(tl.sum(xf * xf, axis=0) / K + eps)
    y = _normed(xf, W, offs, mask, rstd, HAS_NORM, X_DTYPE, Y_DTYPE, INTERPRET)
    amax = tl.maximum(tl.max(tl.abs(y), axis=0), 1e-5)
    return rstd, tl.math.div_rn(127.0, amax)


@triton.jit
def _gemv_kernel(
    X,
    P,
    SCALE,
    W,
    BIAS,
    Y,
    N,
    eps,
    K: tl.constexpr,
    KW: tl.constexpr,
    HAS_NORM: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    X_DTYPE: tl.constexpr,
    Y_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_KW: tl.constexpr,
    BLOCK_ROW: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    # program (i, m): output rows i * BLOCK_N ... of token m
    m = tl.program_id(1).to(tl.int64)
    x_row = X + m * K
    rstd, s = _row_scale(x_row, W, K, eps, HAS_NORM, X_DTYPE, Y_DTYPE, BLOCK_ROW, INTERPRET)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    lane = tl.arange(0, 16)
    acc = tl.zeros((BLOCK_N,), dtype=tl.int32)
    for w0 in range(0, KW, BLOCK_KW):
        words = w0 + tl.arange(0, BLOCK_KW)
        wt = tl.load(
            P + rows[:, None].to(tl.int64) * KW + words[None, :],
            mask=rmask[:, None] & (words < KW)[None, :],
            other=0,
        )
        ks = words[:, None] * 16 + lane[None, :]  # (BLOCK_KW, 16): the codes of each word
        kmask = ks < K
        xf = tl.load(x_row + ks, mask=kmask, other=0.0).to(tl.float32)
        y = _normed(xf, W, ks, kmask, rstd, HAS_NORM, X_DTYPE, Y_DTYPE, INTERPRET)
        q = tl.minimum(tl.maximum(round_half_even(y * s, INTERPRET), -128.0), 127.0).to(tl.int32)
        codes = ((wt[:, :, None] >> (2 * lane)[None, None, :]) & 3) - 1  # (BLOCK_N, BLOCK_KW, 16)
        acc += tl.sum(tl.sum(codes * q[None, :, :], axis=2), axis=1)
    out = tl.math.div_rn(acc.to(tl.float32) * tl.load(SCALE + rows, mask=rmask, other=0.0), s)
    if HAS_BIAS:
        out += tl.load(BIAS + rows, mask=rmask, other=0.0).to(tl.float32)
    tl.store(Y + m * N + rows, round_to(out, Y.dtype.element_ty, INTERPRET), mask=rmask)


@triton.jit
def _quant_kernel(
    X,
    W,
    Q,
    S,
    eps,
    K: tl.constexpr,
    HAS_NORM: tl.constexpr,
    X_DTYPE: tl.constexpr,
    Y_DTYPE: tl.constexpr,
    BLOCK_ROW: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    # one program per token: int8 codes and s_x of the (normalized) row
    m = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_ROW)
    mask = offs < K
    xf = tl.load(X + m * K + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0
    if HAS_NORM:
        rstd = tl.math.rsqrt(tl.sum(xf * xf, axis=0) / K + eps)
    y = _normed(xf, W, offs, mask, rstd, HAS_NORM, X_DTYPE, Y_DTYPE, INTERPRET)
    q, s = absmax_quantize(y, INTERPRET)
    tl.store(Q + m * K + offs, q, mask=mask)
    tl.store(S + m, s)


@triton.jit
def _gemm_kernel(
    Q,
    P,
    S,
    SCALE,
    BIAS,
    Y,
    M,
    N,
    K: tl.constexpr,
    KW: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask, nmask = rm < M, rn < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        kmask = rk < K
        a = tl.load(
            Q + rm[:, None].to(tl.int64) * K + rk[None, :], mask=mmask[:, None] & kmask[None, :], other=0
        )
        # each word is read by the 16 columns it holds (from cache) and decoded to a (BLOCK_K, BLOCK_N) tile
        wt = tl.load(
            P + rn[None, :].to(tl.int64) * KW + (rk // 16)[:, None],
            mask=kmask[:, None] & nmask[None, :],
            other=0,
        )
        b = (((wt >> (2 * (rk % 16))[:, None]) & 3) - 1).to(tl.int8)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    s = tl.load(S + rm, mask=mmask, other=1.0)
    out = tl.math.div_rn(acc.to(tl.float32) * tl.load(SCALE + rn, mask=nmask, other=0.0)[None, :], s[:, None])
    if HAS_BIAS:
        out += tl.load(BIAS + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    offs = rm[:, None].to(tl.int64) * N + rn[None, :]
    tl.store(Y + offs, round_to(out, Y.dtype.element_ty, INTERPRET), mask=mmask[:, None] & nmask[None, :])


# ---- launchers -------------------------------------------------------------------------


def _dtypes(x: torch.Tensor, norm_weight: torch.Tensor | None):
    """Triton dtypes of x and of RMSNorm's output (torch promotes weight * x)."""
    y = x.dtype if norm_weight is None else torch.promote_types(norm_weight.dtype, x.dtype)
    return tl_dtype(x.dtype), tl_dtype(y)


def _gemv(x, words, scale, norm_weight, bias, eps):
    m, k = x.shape
    n, kw = words.shape
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    block_n = 16 if INTERPRET else (8 if n >= 1024 else 4)  # the interpreter runs programs one by one
    block_kw = min(triton.next_power_of_2(kw), 8 if INTERPRET else 64)
    x_dtype, y_dtype = _dtypes(x, norm_weight)
    dummy = scale
    launch(_gemv_kernel)[(triton.cdiv(n, block_n), m)](
        x,
        words,
        scale,
        dummy if norm_weight is None else norm_weight,
        dummy if bias is None else bias,
        y,
        n,
        eps,
        K=k,
        KW=kw,
        HAS_NORM=norm_weight is not None,
        HAS_BIAS=bias is not None,
        X_DTYPE=x_dtype,
        Y_DTYPE=y_dtype,
        BLOCK_N=block_n,
        BLOCK_KW=block_kw,
        BLOCK_ROW=triton.next_power_of_2(k),
        INTERPRET=INTERPRET,
        num_warps=4,
    )
    return y


def _gemm(x, words, scale, norm_weight, bias, eps):
    m, k = x.shape
    n, kw = words.shape
    q = torch.empty(m, k, device=x.device, dtype=torch.int8)
    s = torch.empty(m, device=x.device, dtype=torch.float32)
    x_dtype, y_dtype = _dtypes(x, norm_weight)
    block_row = triton.next_power_of_2(k)
    launch(_quant_kernel)[(m,)](
        x,
        scale if norm_weight is None else norm_weight,
        q,
        s,
        eps,
        K=k,
        HAS_NORM=norm_weight is not None,
        X_DTYPE=x_dtype,
        Y_DTYPE=y_dtype,
        BLOCK_ROW=block_row,
        INTERPRET=INTERPRET,
        num_warps=row_warps(block_row),
    )
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    bm, bn, bk, warps, stages = (16, 32, 32, 4, 1) if INTERPRET else (64, 128, 128, 4, 3)
    launch(_gemm_kernel)[(triton.cdiv(m, bm), triton.cdiv(n, bn))](
        q,
        words,
        s,
        scale,
        scale if bias is None else bias,
        y,
        m,
        n,
        K=k,
        KW=kw,
        HAS_BIAS=bias is not None,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        INTERPRET=INTERPRET,
        num_warps=warps,
        num_stages=stages,
    )
    return y


def _ternary_linear(
    x: torch.Tensor,
    words: torch.Tensor,
    scale: torch.Tensor,
    norm_weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    assert x.dim() == 2 and x.is_contiguous() and words.dtype == torch.int32, (
        "x (M, K) contiguous, int32 words"
    )
    assert scale.dtype == torch.float32 and scale.shape == (words.shape[0],), "one float32 gamma per row"
    if x.shape[0] <= GEMV_MAX_TOKENS:
        return _gemv(x, words, scale, norm_weight, bias, eps)
    return _gemm(x, words, scale, norm_weight, bias, eps)


# A torch op, so torch.compile traces into the kernels (a triton_op) and CUDA graphs capture them;
# the interpreter's kernels cannot be compiled, so there it is an opaque custom op.
ternary_linear = kernel_op("bittern::ternary_linear_packed")(_ternary_linear)
ternary_linear.__doc__ = (
    """y = norm-quantize(x) @ codes^T * scale / s_x (+ bias) for x (M, K) and packed words."""
)
