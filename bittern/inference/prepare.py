"""Readying a loaded model for fast decoding: freeze, pack, cast; and loading any model that way.

On CUDA with Triton: fully quantized BitLinears are frozen to TernaryLinear (the codes and gamma
training computed), every TernaryLinear is packed (`TernaryLinear.to_packed`, 2 bits per weight,
run by `bittern.kernels.ternary_gemv`), the floating parameters are cast to bfloat16 (the
twin's nn.Linear weights included, so both run the same decode), and the packed projections that
read one input (q/k/v, gate/up) are grouped to run as one kernel launch (`fuse`). Buffers keep
their dtype: gamma and the RoPE tables stay float32. On the CPU the model is left as it is.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from bittern.nn import BitLinear
from bittern.nn.ternary_linear import TernaryLinear


def packed_kernels_available(device: torch.device) -> bool:
    """True where the packed kernels run: a CUDA device with Triton installed."""
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


def freeze(model: nn.Module) -> nn.Module:
    """Swap every fully quantized BitLinear (lambda 1) for the TernaryLinear holding its codes."""
    for name, module in list(model.named_modules()):
        if isinstance(module, BitLinear) and module.quantized:
            module.sync_lambda()  # the host records, re-read only if the buffers were written
            if module.lambda_is_one:
                model.set_submodule(name, TernaryLinear.from_bitlinear(module))
    return model


def pack(model: nn.Module) -> nn.Module:
    """Swap every TernaryLinear for its packed form (needs Triton; per-group scales stay unpacked)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, TernaryLinear):
            model.set_submodule(name, module.to_packed())
    return model


SHARED_INPUTS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def fuse(model: nn.Module) -> nn.Module:
    """Group each module's packed q/k/v and gate/up projections (`bittern.nn.packed_linear.fuse_packed`).

    `bittern.nn.apply_shared` then runs each group as one layer; layers that cannot be grouped
    (unpacked, different widths or norm eps) are left alone.
    """
    from bittern.nn.packed_linear import PackedTernaryLinear, fuse_packed

    for module in list(model.modules()):
        for names in SHARED_INPUTS:
            layers = [getattr(module, name, None) for name in names]
            if isinstance(layers[0], PackedTernaryLinear) and layers[0].shared_group is None:
                fuse_packed(layers)  # nothing changed where they cannot be fused
    return model


def set_variant(model: nn.Module, variant: str) -> nn.Module:
    """The packed kernel variant (`bittern.kernels.ternary_gemv.VARIANTS`) of every packed layer and group."""
    from bittern.nn.packed_linear import PackedTernaryGroup, PackedTernaryLinear

    for module in model.modules():
        if isinstance(module, (PackedTernaryLinear, PackedTernaryGroup)):
            module.variant = variant
    return model


def cast_parameters(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Floating parameters to `dtype` (tied ones once); buffers (gamma, RoPE) as they are."""
    for p in model.parameters():
        if p.is_floating_point():
            p.data = p.data.to(dtype)
    return model


def prepare_for_decoding(
    model: nn.Module,
    device: torch.device,
    packed: bool | None = None,
    dtype: torch.dtype | None = None,
    fuse_shared: bool = True,
    variant: str = "auto",
) -> nn.Module:
    """The model ready for `StaticDecoder` on `device` (see the module docstring); eval mode, no grads.

    packed None: wherever the kernels run; dtype None: bfloat16 on CUDA, unchanged elsewhere;
    fuse_shared: group the packed layers that read one input; variant: the packed kernels' variant.
    """
    device = torch.device(device)
    model = model.to(device).eval().requires_grad_(False)
    if packed is None:
        packed = packed_kernels_available(device)
    if packed:
        pack(freeze(model))
    if dtype is None and device.type == "cuda":
        dtype = torch.bfloat16
    if dtype is not None:
        cast_parameters(model, dtype)
    if packed:
        if fuse_shared:
            fuse(model)
        set_variant(model, variant)
    return model.requires_grad_(False)  # the packed modules are new: no autograd through their ops


def load_for_decoding(
    path, device: torch.device, packed: bool | None = None, dtype: torch.dtype | None = None
) -> tuple[nn.Module, object]:
    """(model ready for decoding, tokenizer) from anything `bittern.export.load_any` reads."""
    from bittern.export import load_any

    model, tokenizer = load_any(path, device=device)
    return prepare_for_decoding(model, device, packed, dtype), tokenizer
