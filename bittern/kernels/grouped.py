"""Grouped GEMMs for mixture-of-experts layers: row block e of x times expert e's weight.

x is (M, K) with its rows sorted by expert, counts[e] rows each; w is (E, N, K) in nn.Linear's
(out, in) layout. `grouped_mm` takes torch._grouped_mm (one kernel for all experts) for bf16 on
CUDA where this torch has it, else one matmul per row block. `grouped_ternary_linear` is the
ternary experts' forward at lambda 1 on the Triton int8 x ternary kernel
(bittern.kernels.grouped_ternary), with a straight-through backward; whether experts take it is
decided in `bittern.nn.fastpath`.

This module imports no Triton; the kernel module is imported on first use.
"""

from __future__ import annotations

import torch

from bittern.quant.core import dequantize_activations, dequantize_weight, quantize_activations, ternarize


def _autocast_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on `t` runs in: autocast's where it is on, else t's own."""
    kind = t.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return t.dtype


def _torch_grouped_ok(x: torch.Tensor, w: torch.Tensor) -> bool:
    """torch._grouped_mm's own limits: bf16 on a CUDA sm_90+ GPU, 16-byte-aligned rows."""
    return (
        hasattr(torch, "_grouped_mm")
        and x.is_cuda
        and x.dtype == torch.bfloat16
        and torch.cuda.get_device_capability(x.device) >= (9, 0)
        and x.shape[1] % 8 == 0
        and w.shape[1] % 8 == 0
    )


def grouped_mm_loop(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The reference: one matmul per expert's row block (synchronizes on counts)."""
    parts = torch.split(x, counts.tolist())
    return torch.cat([p @ w[e].transpose(0, 1) for e, p in enumerate(parts)])


def grouped_mm(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(M, N): rows of expert e (sorted, counts[e] of them) times w[e]^T, in the autocast dtype."""
    dtype = _autocast_dtype(x)
    x, w = x.to(dtype), w.to(dtype)
    if _torch_grouped_ok(x, w):
        offs = counts.cumsum(0).to(torch.int32)
        return torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)
    return grouped_mm_loop(x, w, counts)


def _quantize_experts(w: torch.Tensor, granularity: str, gamma_multiplier: float):
    """Per-expert ternary codes (E, N, K) int8 and scales (E, N) float32 (per tensor: broadcast)."""
    codes, gammas = [], []
    for we in w:
        c, g = ternarize(we, granularity, gamma_multiplier=gamma_multiplier)
        codes.append(c)
        gammas.append(g.reshape(-1).expand(we.shape[0]))
    return torch.stack(codes), torch.stack(gammas).float()


class _GroupedTernary(torch.autograd.Function):
    """Forward on the int8 x ternary kernel; backward straight-through in the float dtype."""

    @staticmethod
    def forward(ctx, x, w, counts, granularity: str, gamma_multiplier: float):
        from bittern.kernels.grouped_ternary import grouped_int8_ternary_mm

        x_codes, s_x = quantize_activations(x)
        w_codes, gamma = _quantize_experts(w, granularity, gamma_multiplier)
        dtype = _autocast_dtype(x)
        y = grouped_int8_ternary_mm(x_codes, s_x.reshape(-1), w_codes, gamma, counts, out_dtype=dtype)
        ctx.save_for_backward(x_codes, s_x, w_codes, gamma, counts)
        ctx.dtype, ctx.w_dtype = dtype, w.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x_codes, s_x, w_codes, gamma, counts = ctx.saved_tensors
        w_q = (w_codes.float() * gamma[:, :, None]).to(ctx.dtype)
        x_q = dequantize_activations(x_codes, s_x).to(ctx.dtype)
        grad_y = grad_y.to(ctx.dtype)
        grad_x = grouped_mm(grad_y, w_q.transpose(-2, -1), counts)  # dy_e @ W_e
        sizes = counts.tolist()
        grad_w = torch.stack(
            [g.transpose(0, 1) @ xe for g, xe in zip(grad_y.split(sizes), x_q.split(sizes), strict=True)]
        )
        return grad_x, grad_w.to(ctx.w_dtype), None, None, None


def grouped_ternary_linear(
    x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor, granularity: str, gamma_multiplier: float
) -> torch.Tensor:
    """BitLinear's forward (already normed x) for every expert at once: (x_q @ W_q[e]^T) * gamma_e / s_x.

    `granularity` "tensor" or "channel" (of each expert's weight), as BitLinearOptions names it.
    """
    return _GroupedTernary.apply(x, w, counts, granularity, gamma_multiplier)


def grouped_ternary_reference(
    x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor, granularity: str, gamma_multiplier: float
) -> torch.Tensor:
    """The same product from the reference quantizers and `grouped_mm_loop`, for tests."""
    xq = dequantize_activations(*quantize_activations(x))
    wq = torch.stack(
        [dequantize_weight(*ternarize(we, granularity, gamma_multiplier=gamma_multiplier)) for we in w]
    )
    return grouped_mm_loop(xq, wq, counts)


# ---- the experts' BitLinears with their codes kept (the fast path) -----------------------


def _out_dtype(x: torch.Tensor, norm_w: torch.Tensor | None) -> torch.dtype:
    """The dtype the reference's matmul returns: autocast's, else the normed (or plain) x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype if norm_w is None else torch.promote_types(norm_w.dtype, x.dtype)


def dequantize_experts(codes: torch.Tensor, gamma: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """codes * gamma (E, N, K) in `dtype`; (codes.float() * gamma).to(dtype) exactly (codes are -1, 0, 1)."""
    return codes.to(dtype) * gamma.to(dtype)[:, :, None]


def grouped_mm_weight_grad(dy: torch.Tensor, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(E, N, K): dy_e^T @ x_e per expert row block, in the autocast dtype (rowless experts: 0)."""
    dtype = _autocast_dtype(dy)
    dy, x = dy.to(dtype).contiguous(), x.to(dtype).contiguous()
    if _torch_grouped_ok(x, x) and dy.shape[1] % 8 == 0:  # bf16 on sm_90+, K and N 16-byte rows
        return torch._grouped_mm(dy.transpose(0, 1), x, offs=counts.cumsum(0).to(torch.int32))
    sizes = counts.tolist()
    return torch.stack(
        [g.transpose(0, 1) @ xe for g, xe in zip(dy.split(sizes), x.split(sizes), strict=True)]
    )


class _GroupedBitLinear(torch.autograd.Function):
    """The experts' BitLinears at lambda 1 from kept codes: norm + int8 quantization, grouped kernel.

    Forward: x's rows (sorted by expert) normalized with each row's expert norm weight and
    quantized per row in one pass (`expertnorm`, once per set of norm weights), then one
    grouped int8 x ternary GEMM over all `parts` (gate and up: one GEMM of 2 * n rows). Backward
    straight-through like the reference: grad_input through codes * gamma as bf16 grouped GEMMs,
    then the norm's backward; grad_weight = grad^T @ (codes / s_x) as a grouped GEMM, split
    back onto each expert's latent weight.
    """

    @staticmethod
    def forward(ctx, x, norm_w, w_codes, gamma, counts, parts: int, eps: float, *weights):
        from bittern.kernels import actquant, expertnorm
        from bittern.kernels.grouped_ternary import BLOCK_M, grouped_int8_ternary_mm, tile_map

        dtype = _out_dtype(x, norm_w)
        x = x.contiguous()
        tiles = tile_map(counts, x.shape[0], BLOCK_M)
        if norm_w is None:  # one set of codes for every part
            codes, s_x, _ = actquant.rmsnorm_quant(x, None, 0.0)
            codes, s_x, rstd = codes[None], s_x[None], None
        else:
            codes, s_x, rstd = expertnorm.rmsnorm_quant_experts(x, norm_w, counts, eps, tiles)
        y = grouped_int8_ternary_mm(codes, s_x, w_codes, gamma, counts, dtype, parts, tiles)
        ctx.save_for_backward(
            x if norm_w is not None else None, norm_w, rstd, codes, s_x, w_codes, gamma, counts
        )
        ctx.tiles, ctx.parts, ctx.dtype = tiles, parts, dtype
        ctx.w_dtype, ctx.x_dtype = weights[0].dtype, x.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y):
        from bittern.kernels import actquant, expertnorm

        x, norm_w, rstd, codes, s_x, w_codes, gamma, counts = ctx.saved_tensors
        parts, dtype = ctx.parts, ctx.dtype
        grad_y = grad_y.to(dtype).contiguous()
        n_experts, n_total, _ = w_codes.shape
        n = n_total // parts
        grad_parts = [grad_y] if parts == 1 else [g.contiguous() for g in grad_y.split(n, dim=1)]
        grad_x = grad_norm = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            w_q = dequantize_experts(w_codes, gamma, dtype)
            if norm_w is None:  # one x for all parts: one product over all of them
                grad_x = grouped_mm(grad_y, w_q.transpose(-2, -1), counts).to(ctx.x_dtype)
            else:
                grad_n = torch.stack(
                    [
                        grouped_mm(grad_parts[p], w_q[:, p * n : (p + 1) * n].transpose(-2, -1), counts)
                        for p in range(parts)
                    ]
                )
                grad_x, grad_norm = expertnorm.rmsnorm_experts_backward(
                    grad_n, x, norm_w, counts, rstd, ctx.tiles
                )
        grads_w = [None] * (parts * n_experts)
        if any(ctx.needs_input_grad[7:]):
            if codes.shape[0] == 1:  # the same activations for every part
                x_q = actquant.dequantize_rows(codes[0], s_x[0], dtype)
                grad_w = [grouped_mm_weight_grad(grad_y, x_q, counts)]
            else:
                grad_w = [
                    grouped_mm_weight_grad(
                        grad_parts[p], actquant.dequantize_rows(codes[p], s_x[p], dtype), counts
                    )
                    for p in range(parts)
                ]
            grad_w = torch.cat(grad_w, dim=1) if len(grad_w) > 1 else grad_w[0]  # (E, parts * n, K)
            grad_w = grad_w.to(ctx.w_dtype)
            grads_w = [grad_w[e, p * n : (p + 1) * n] for p in range(parts) for e in range(n_experts)]
        return grad_x, grad_norm, None, None, None, None, None, *grads_w


def grouped_bitlinear(
    x: torch.Tensor,
    norm_weights: torch.Tensor | None,
    codes: torch.Tensor,
    gamma: torch.Tensor,
    counts: torch.Tensor,
    weights: list[torch.Tensor],
    parts: int = 1,
    eps: float = 0.0,
) -> torch.Tensor:
    """`parts` projections of every expert's BitLinear at once, from their kept codes: (M, parts * n).

    x (M, K) rows sorted by expert (counts[e] for expert e); norm_weights (parts, E, K): each
    part's RMSNorm weight per expert (None: x is quantized as it is, one set of codes for every
    part); codes (E, parts * n, K) int8 and gamma (E, parts * n) float32: expert e's part p in
    rows p * n to (p + 1) * n; `weights`: the latent weights the gradient goes to, part-major
    (part 0's E experts, then part 1's), each (n, K). No bias: the caller adds it.
    """
    return _GroupedBitLinear.apply(x, norm_weights, codes, gamma, counts, parts, eps, *weights)


def grouped_bitlinear_reference(
    x: torch.Tensor,
    norm_weights: torch.Tensor | None,
    weights: list[torch.Tensor],
    counts: torch.Tensor,
    granularity: str,
    gamma_multiplier: float,
    parts: int = 1,
    eps: float = 0.0,
) -> torch.Tensor:
    """`grouped_bitlinear` from the reference quantizers, norms and `grouped_mm_loop`, for tests."""
    from bittern.kernels.expertnorm import rmsnorm_experts_reference
    from bittern.quant.ste import fake_quant_activations, fake_quant_weight

    n_experts = counts.numel()
    xs = [x] * parts if norm_weights is None else rmsnorm_experts_reference(x, norm_weights, counts, eps)[0]
    ys = []
    for p in range(parts):
        w = torch.stack(
            [
                fake_quant_weight(
                    weights[p * n_experts + e], granularity=granularity, gamma_multiplier=gamma_multiplier
                )
                for e in range(n_experts)
            ]
        )
        ys.append(grouped_mm_loop(fake_quant_activations(xs[p]), w.to(_autocast_dtype(xs[p])), counts))
    return torch.cat(ys, dim=1)
