"""Device and precision choices, made once from config."""

from __future__ import annotations

import contextlib

import torch

from bittern.errors import BitternError


def resolve_device(spec: str) -> torch.device:
    """'auto' -> the first GPU if there is one, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise BitternError(f"train.device: unknown device {spec!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BitternError(f"train.device is {spec!r} but no CUDA GPU is available")
    return device


def resolve_precision(spec: str, device: torch.device) -> str:
    """'auto' -> bf16 on GPU, fp32 on CPU."""
    if spec == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return spec


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a forward pass (a no-op in fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)
