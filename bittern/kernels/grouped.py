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
