"""Ternary x int8 matmuls on 2-bit packed weights, the codes decoded in registers (W2A8 inference).

y = (x_q @ codes^T) * gamma / s_x (+ bias): `bittern.nn.TernaryLinear`'s math, with the optional
RMSNorm inside the layer in front, the activations quantized per token to int8 as training does
(`bittern.quant.quantize_activations`), the product summed exactly in int32 and gamma / s_x
applied in the float32 epilogue.

Weight layout (`pack_words`): int32 words (N, ceil(K / 16)); code k of row n sits in word k // 16
at bits 2 * (k % 16), stored unsigned as c = code + 1 in {0, 1, 2} (the padding of the last word
is c = 0 and meets zero activations). A row of K codes takes K / 4 bytes. The kernels multiply
the unsigned c and subtract sum(q) per token once: sum(code * q) = sum(c * q) - sum(q), which
saves the per-code subtract and lets 4 codes be 4 unsigned bytes: `(word >> 2 j) & 0x03030303`
holds codes 4 b + j (b = 0..3) of the word in its bytes, one `dp4a` multiplies them by 4 int8
activations and adds (the interpreter, or `dp4a=False`, does the same in plain integer ops).

Activation layout (`_quant_kernel`): int8 q (G, M, K16) with K16 = 16 * ceil(K / 16), the padding
zero, each 16-group permuted so that q[16 w + 4 b + j] sits at byte 16 w + 4 j + b; read as int32
(G, M, K16 / 4), element [w, j] holds exactly the 4 activations that word w's lane j meets. Also
s_x (G, M) and sum(q) (G, M) int32. G > 1 serves a group of layers that read the same x through
different inside norms (q/k/v, gate/up): one quantization per member, over one launch.

Kernels (all deterministic, exact int32 sums; results equal `ternary_linear_reference`):

- `_gemv_kernel`, one program per (block of output rows, token). FUSED (the default for one or
  two tokens): the program normalizes and quantizes its token's row itself (one pass for rstd and
  s_x, then each K-chunk quantized as it is used), so a layer is one launch. Not fused: it reads
  the int8 q and s_x / sum(q) that `_quant_kernel` wrote (two launches, no repeated row work).
- `_dot_kernel` for more tokens and prefill: `_quant_kernel` (q in plain order), then a
  tensor-core int8 GEMM (tokens padded to a 16-row tile for decode batches); each word is loaded
  once and decoded to its 16 codes by shift + and + cast, c in {0, 1, 2} as the B operand.

`ternary_linear` (one layer) and `ternary_linear_group` (layers sharing x, their rows
concatenated, each block of rows inside one member) pick a variant by the token count, or take
`variant=` ("fused", "gemv", "dot", each "-int" for no dp4a); tile sizes come from
`gemv_config` / `dot_config`, small functions of (N, K, M). Both are torch ops (`kernel_op`), so
torch.compile traces into the kernels and CUDA graphs capture them (no host syncs inside).
Importing this module imports Triton; under `TRITON_INTERPRET=1` the kernels run on CPU tensors
(the tests), which is why rounding, casts and the int8 quantization take the interpreter-safe
forms of `bittern.kernels.common`, dp4a is emulated there, and every loop bound is a `tl.constexpr`.
"""

from __future__ import annotations

import math

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
FUSED_MAX_TOKENS = 2  # "auto": up to this many tokens one fused GEMV launch, more: quantize + dot
VARIANTS = ("auto", "fused", "gemv", "dot", "fused-int", "gemv-int")
MAX_GROUP = 3  # members of a fused group (q/k/v)

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


def ternary_linear_group_reference(
    x: torch.Tensor,
    words: torch.Tensor,
    scale: torch.Tensor,
    norm_weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    starts: list[int],
) -> torch.Tensor:
    """`ternary_linear_group` in PyTorch: each member (rows from starts[i - 1] to starts[i]) through
    `ternary_linear_reference` with its own norm weight (row i of a (G, K) `norm_weight`, or the
    one (K,) weight, or none), the outputs concatenated."""
    bounds = [0, *starts, words.shape[0]]
    outs = []
    for i in range(len(bounds) - 1):
        rows = slice(bounds[i], bounds[i + 1])
        nw = norm_weight if norm_weight is None or norm_weight.dim() == 1 else norm_weight[i]
        b = None if bias is None else bias[rows]
        outs.append(ternary_linear_reference(x, words[rows], scale[rows], nw, b, eps))
    return torch.cat(outs, dim=-1)


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
def _dot4(c, q, acc, DP4A: tl.constexpr):
    """acc + sum over the 4 bytes b of (unsigned byte b of c) * (signed byte b of q), all int32.

    One `dp4a` instruction on the GPU; shifts and masks otherwise (the interpreter, or to compare).
    """
    if DP4A:
        return tl.inline_asm_elementwise(
            "dp4a.u32.s32 $0, $1, $2, $3;",
            "=r,r,r,r",
            [c, q, acc],
            dtype=tl.int32,
            is_pure=True,
            pack=1,
        )
    else:
        for b in tl.static_range(4):
            acc += ((c >> (8 * b)) & 0xFF) * ((q << (24 - 8 * b)) >> 24)
        return acc


@triton.jit
def _member(row0, SEG1, SEG2):
    """Which member of a group (0, 1, 2) the rows from row0 on belong to (members start at SEG1, SEG2)."""
    return (row0 >= SEG1).to(tl.int32) + (row0 >= SEG2).to(tl.int32)


@triton.jit
def _gemv_kernel(
    X,
    Q,
    S,
    QSUM,
    P,
    SCALE,
    W,
    BIAS,
    Y,
    M,
    N,
    SEG1,
    SEG2,
    eps,
    K: tl.constexpr,
    KW: tl.constexpr,
    FUSED: tl.constexpr,
    HAS_NORM: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    X_DTYPE: tl.constexpr,
    Y_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_KW: tl.constexpr,
    BLOCK_ROW: tl.constexpr,
    DP4A: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    # program (i, m): output rows i * BLOCK_N ... of token m, all inside one member g of the group
    m = tl.program_id(1)
    row0 = tl.program_id(0) * BLOCK_N
    g = _member(row0, SEG1, SEG2)
    gm = (g * M + m).to(tl.int64)
    rows = row0 + tl.arange(0, BLOCK_N)
    rmask = rows < N
    lanes = tl.arange(0, 4)
    x_row = X + m.to(tl.int64) * K
    w_row = W + g * K
    if FUSED:  # this token's rstd and s_x (the row is small and in cache)
        rstd, s = _row_scale(x_row, w_row, K, eps, HAS_NORM, X_DTYPE, Y_DTYPE, BLOCK_ROW, INTERPRET)
    else:
        s = tl.load(S + gm)
    acc = tl.zeros((BLOCK_N, BLOCK_KW), dtype=tl.int32)
    qacc = tl.zeros((BLOCK_KW,), dtype=tl.int32)
    for w0 in range(0, KW, BLOCK_KW):
        words = w0 + tl.arange(0, BLOCK_KW)
        wmask = words < KW
        wt = tl.load(
            P + rows[:, None].to(tl.int64) * KW + words[None, :],
            mask=rmask[:, None] & wmask[None, :],
            other=0,
        )
        for j in tl.static_range(4):
            # qp[w]: the 4 int8 activations of codes 16 w + 4 b + j (b = 0..3) as the bytes of an int32
            if FUSED:
                ks = words[:, None] * 16 + lanes[None, :] * 4 + j  # (BLOCK_KW, 4)
                kmask = ks < K
                xf = tl.load(x_row + ks, mask=kmask, other=0.0).to(tl.float32)
                y = _normed(xf, w_row, ks, kmask, rstd, HAS_NORM, X_DTYPE, Y_DTYPE, INTERPRET)
                qv = tl.minimum(tl.maximum(round_half_even(y * s, INTERPRET), -128.0), 127.0).to(tl.int32)
                qacc += tl.sum(qv, axis=1)
                qp = tl.sum((qv & 0xFF) << (8 * lanes)[None, :], axis=1)
            else:
                qp = tl.load(Q + gm * (KW * 4) + words * 4 + j, mask=wmask, other=0)
            c = (wt >> (2 * j)) & 0x03030303  # codes 16 w + 4 b + j, unsigned, one a byte
            acc = _dot4(c, tl.broadcast_to(qp[None, :], (BLOCK_N, BLOCK_KW)), acc, DP4A)
    if FUSED:
        qsum = tl.sum(qacc, axis=0)
    else:
        qsum = tl.load(QSUM + gm)
    total = tl.sum(acc, axis=1) - qsum  # sum((c - 1) * q) = sum(c * q) - sum(q)
    out = tl.math.div_rn(total.to(tl.float32) * tl.load(SCALE + rows, mask=rmask, other=0.0), s)
    if HAS_BIAS:
        out += tl.load(BIAS + rows, mask=rmask, other=0.0).to(tl.float32)
    tl.store(Y + m.to(tl.int64) * N + rows, round_to(out, Y.dtype.element_ty, INTERPRET), mask=rmask)


@triton.jit
def _quant_kernel(
    X,
    W,
    Q,
    S,
    QSUM,
    M,
    eps,
    K: tl.constexpr,
    K16: tl.constexpr,
    PERMUTE: tl.constexpr,
    HAS_NORM: tl.constexpr,
    X_DTYPE: tl.constexpr,
    Y_DTYPE: tl.constexpr,
    BLOCK_ROW: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    # program (m, g): token m through member g's norm: int8 codes (permuted), s_x and sum(q)
    m = tl.program_id(0)
    g = tl.program_id(1)
    offs = tl.arange(0, BLOCK_ROW)
    mask = offs < K
    xf = tl.load(X + m.to(tl.int64) * K + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0
    if HAS_NORM:
        rstd = tl.math.rsqrt(tl.sum(xf * xf, axis=0) / K + eps)
    y = _normed(xf, W + g * K, offs, mask, rstd, HAS_NORM, X_DTYPE, Y_DTYPE, INTERPRET)
    q, s = absmax_quantize(y, INTERPRET)  # the padding up to K16 is zero
    gm = (g * M + m).to(tl.int64)
    if PERMUTE:  # the GEMV's order: k = 16 w + 4 b + j at 16 w + 4 j + b
        tl.store(Q + gm * K16 + (offs & -16) + ((offs & 3) << 2) + ((offs >> 2) & 3), q, mask=offs < K16)
    else:
        tl.store(Q + gm * K16 + offs, q, mask=offs < K16)
    tl.store(S + gm, s)
    tl.store(QSUM + gm, tl.sum(q.to(tl.int32), axis=0))


@triton.jit
def _dot_kernel(
    Q,
    S,
    QSUM,
    P,
    SCALE,
    BIAS,
    Y,
    M,
    N,
    SEG1,
    SEG2,
    KW: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_KW: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    col0 = tl.program_id(1) * BLOCK_N
    rn = col0 + tl.arange(0, BLOCK_N)
    mmask, nmask = rm < M, rn < N
    gm = _member(col0, SEG1, SEG2) * M + rm
    q_rows = Q + gm[:, None].to(tl.int64) * (KW * 16)
    lanes = tl.arange(0, 16)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for w0 in range(0, KW, BLOCK_KW):
        wi = w0 + tl.arange(0, BLOCK_KW)
        wmask = wi < KW
        # each word loaded once and decoded to its 16 codes: a (BLOCK_KW * 16, BLOCK_N) tile, K in order
        wt = tl.load(
            P + rn[None, :].to(tl.int64) * KW + wi[:, None],
            mask=wmask[:, None] & nmask[None, :],
            other=0,
        )
        b = ((wt[:, None, :] >> (2 * lanes)[None, :, None]) & 3).to(tl.int8)
        b = tl.reshape(b, (BLOCK_KW * 16, BLOCK_N))
        rk = w0 * 16 + tl.arange(0, BLOCK_KW * 16)
        a = tl.load(q_rows + rk[None, :], mask=mmask[:, None] & (rk < KW * 16)[None, :], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    qsum = tl.load(QSUM + gm, mask=mmask, other=0)
    s = tl.load(S + gm, mask=mmask, other=1.0)
    total = (acc - qsum[:, None]).to(tl.float32)
    out = tl.math.div_rn(total * tl.load(SCALE + rn, mask=nmask, other=0.0)[None, :], s[:, None])
    if HAS_BIAS:
        out += tl.load(BIAS + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    offs = rm[:, None].to(tl.int64) * N + rn[None, :]
    tl.store(Y + offs, round_to(out, Y.dtype.element_ty, INTERPRET), mask=mmask[:, None] & nmask[None, :])


# ---- configs and launchers -------------------------------------------------------------


def gemv_config(n: int, k: int, m: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_KW, num_warps) of `_gemv_kernel` for N output rows, K inputs, M tokens.

    Decode is latency-bound: the whole K of a row block in one or a few wide word tiles (a
    program's loads all in flight at once), and enough programs (one per row block and token)
    for every multiprocessor to hold a couple.
    """
    kw = -(-k // CODES_PER_WORD)
    if INTERPRET:  # the interpreter runs programs one by one: few, and chunks small enough to loop
        return 16, min(triton.next_power_of_2(kw), 8), 4
    block_kw = min(triton.next_power_of_2(kw), 128)
    work = n * m
    block_n = 32 if work >= 8192 else 16 if work >= 2048 else 8  # fused: fewer repeats of the row work
    return block_n, block_kw, 8 if k > 4096 else 4


def dot_config(n: int, k: int, m: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_KW, num_warps, num_stages) of `_dot_kernel`: tokens padded to a 16-row
    tile for a decode batch, larger tiles for prefill (each without register spills on sm_90)."""
    if INTERPRET:
        return 16, 16, 16, 4, 1
    if m <= 16:
        return (16, 32, 8, 4, 2) if n <= 4096 else (16, 64, 4, 4, 2)
    if m <= 64:
        return 64, 64, 4, 4, 3
    return 64, 128, 4, 8, 3


def _dtypes(x: torch.Tensor, norm_weight: torch.Tensor | None):
    """Triton dtypes of x and of RMSNorm's output (torch promotes weight * x)."""
    y = x.dtype if norm_weight is None else torch.promote_types(norm_weight.dtype, x.dtype)
    return tl_dtype(x.dtype), tl_dtype(y)


def _fit(block: int, starts: list[int]) -> int:
    """`block` halved until it divides every member start (a row block never spans two members)."""
    step = math.gcd(*starts) if starts else 0
    while step and step % block:
        block //= 2
    return block


def _segments(starts: list[int], n: int) -> tuple[int, int]:
    return tuple(list(starts) + [n] * (2 - len(starts)))


def quantize_rows(
    x: torch.Tensor, norm_weight: torch.Tensor | None, eps: float, groups: int = 1, permute: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_quant_kernel`: int8 q (G, M, K16) (in the GEMV's permuted order, or in order for the dot),
    s_x (G, M), sum(q) (G, M)."""
    m, k = x.shape
    k16 = -(-k // CODES_PER_WORD) * CODES_PER_WORD
    q = torch.empty(groups, m, k16, device=x.device, dtype=torch.int8)
    s = torch.empty(groups, m, device=x.device, dtype=torch.float32)
    qsum = torch.empty(groups, m, device=x.device, dtype=torch.int32)
    x_dtype, y_dtype = _dtypes(x, norm_weight)
    block_row = triton.next_power_of_2(k16)
    launch(_quant_kernel)[(m, groups)](
        x,
        s if norm_weight is None else norm_weight,
        q,
        s,
        qsum,
        m,
        eps,
        K=k,
        K16=k16,
        PERMUTE=permute,
        HAS_NORM=norm_weight is not None,
        X_DTYPE=x_dtype,
        Y_DTYPE=y_dtype,
        BLOCK_ROW=block_row,
        INTERPRET=INTERPRET,
        num_warps=row_warps(block_row),
    )
    return q, s, qsum


def gemv(
    x, words, scale, norm_weight, bias, eps, starts=(), fused=True, dp4a=True, config=None
) -> torch.Tensor:
    """`_gemv_kernel` (see the module docstring); `config` overrides `gemv_config` (the sweep)."""
    m, k = x.shape
    n, kw = words.shape
    groups = 1 if norm_weight is None or norm_weight.dim() == 1 else norm_weight.shape[0]
    starts = list(starts) if groups > 1 else []
    block_n, block_kw, warps = config or gemv_config(n, k, m)
    block_n = _fit(block_n, starts)
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    x_dtype, y_dtype = _dtypes(x, norm_weight)
    if fused:
        q = s = qsum = scale  # unread
    else:
        q, s, qsum = quantize_rows(x, norm_weight, eps, groups)
        q = q.view(torch.int32)
    seg1, seg2 = _segments(starts, n)
    launch(_gemv_kernel)[(triton.cdiv(n, block_n), m)](
        x,
        q,
        s,
        qsum,
        words,
        scale,
        scale if norm_weight is None else norm_weight,
        scale if bias is None else bias,
        y,
        m,
        n,
        seg1,
        seg2,
        eps,
        K=k,
        KW=kw,
        FUSED=fused,
        HAS_NORM=norm_weight is not None,
        HAS_BIAS=bias is not None,
        X_DTYPE=x_dtype,
        Y_DTYPE=y_dtype,
        BLOCK_N=block_n,
        BLOCK_KW=block_kw,
        BLOCK_ROW=triton.next_power_of_2(kw * CODES_PER_WORD),  # as `quantize_rows`'
        DP4A=dp4a and not INTERPRET,
        INTERPRET=INTERPRET,
        num_warps=warps,
    )
    return y


def dot(x, words, scale, norm_weight, bias, eps, starts=(), config=None) -> torch.Tensor:
    """`_quant_kernel` + `_dot_kernel`; `config` overrides `dot_config` (the sweep)."""
    m, k = x.shape
    n, kw = words.shape
    groups = 1 if norm_weight is None or norm_weight.dim() == 1 else norm_weight.shape[0]
    starts = list(starts) if groups > 1 else []
    bm, bn, bkw, warps, stages = config or dot_config(n, k, m)
    bn = _fit(bn, starts)
    q, s, qsum = quantize_rows(x, norm_weight, eps, groups, permute=False)
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    seg1, seg2 = _segments(starts, n)
    launch(_dot_kernel)[(triton.cdiv(m, bm), triton.cdiv(n, bn))](
        q,
        s,
        qsum,
        words,
        scale,
        scale if bias is None else bias,
        y,
        m,
        n,
        seg1,
        seg2,
        KW=kw,
        HAS_BIAS=bias is not None,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_KW=bkw,
        INTERPRET=INTERPRET,
        num_warps=warps,
        num_stages=stages,
    )
    return y


def pick_variant(m: int) -> str:
    """ "auto"'s choice for m tokens: one fused GEMV launch for a token or two, quantize + dot above."""
    return "fused" if m <= FUSED_MAX_TOKENS else "dot"


def _ternary_linear_group(
    x: torch.Tensor,
    words: torch.Tensor,
    scale: torch.Tensor,
    norm_weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    starts: list[int],
    variant: str,
) -> torch.Tensor:
    assert x.dim() == 2 and x.is_contiguous() and words.dtype == torch.int32, (
        "x (M, K) contiguous, int32 words"
    )
    assert scale.dtype == torch.float32 and scale.shape == (words.shape[0],), "one float32 gamma per row"
    assert variant in VARIANTS, f"variant must be one of {VARIANTS}"
    groups = 1 if norm_weight is None or norm_weight.dim() == 1 else norm_weight.shape[0]
    assert groups == 1 or (groups == len(starts) + 1 <= MAX_GROUP), "one norm weight per member"
    if variant == "auto":
        variant = pick_variant(x.shape[0])
    if variant == "dot":
        return dot(x, words, scale, norm_weight, bias, eps, starts)
    fused, dp4a = variant.startswith("fused"), not variant.endswith("-int")
    return gemv(x, words, scale, norm_weight, bias, eps, starts, fused, dp4a)


# A torch op, so torch.compile traces into the kernels (a triton_op) and CUDA graphs capture them;
# the interpreter's kernels cannot be compiled, so there it is an opaque custom op.
ternary_linear_op = kernel_op("bittern::ternary_linear_packed")(_ternary_linear_group)


def ternary_linear(
    x: torch.Tensor,
    words: torch.Tensor,
    scale: torch.Tensor,
    norm_weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    variant: str = "auto",
) -> torch.Tensor:
    """y = norm-quantize(x) @ codes^T * scale / s_x (+ bias) for x (M, K) and packed words (N, K / 16)."""
    return ternary_linear_op(x, words, scale, norm_weight, bias, eps, [], variant)


def ternary_linear_group(
    x: torch.Tensor,
    words: torch.Tensor,
    scale: torch.Tensor,
    norm_weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    starts: list[int],
    *,
    variant: str = "auto",
) -> torch.Tensor:
    """Layers reading the same x, their words / scales / biases concatenated by rows, in one launch.

    `starts`: the first row of each member after the first (at most 3 members). `norm_weight`:
    None, one (K,) weight all members share (x quantized once), or (G, K), one per member (x
    normalized and quantized once per member, the rows of each member against its own).
    """
    return ternary_linear_op(x, words, scale, norm_weight, bias, eps, list(starts), variant)
