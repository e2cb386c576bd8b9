"""Throughput figures: model FLOPs utilization against the GPU's bf16 peak, and peak memory."""

from __future__ import annotations

import resource
import sys

import torch

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s; first substring match of the device name wins.
BF16_PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIE", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("A100", 312e12),
    ("L40S", 362e12),
)
GB = 1024**3


def peak_flops(device: torch.device | str, override_tflops: float = 0.0) -> float | None:
    """The bf16 dense peak FLOP/s of `device` (override_tflops > 0 wins); None if unknown or a CPU."""
    if override_tflops > 0:
        return override_tflops * 1e12
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device).upper()
    return next((peak for key, peak in BF16_PEAK_FLOPS if key in name), None)


def mfu(tokens_per_sec: float, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilization: achieved FLOP/s over the peak; None without a peak."""
    if not peak or peak <= 0:
        return None
    return tokens_per_sec * flops_per_token / peak


def _max_rss_gb() -> float:
    """The process's peak resident set size (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / GB if sys.platform == "darwin" else rss * 1024 / GB


def memory_stats(device: torch.device | str) -> dict[str, float]:
    """Peak memory in GiB: allocated/reserved on CUDA (since `reset_peak`), max RSS on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return {
            "memory/peak_allocated_gb": torch.cuda.max_memory_allocated(device) / GB,
            "memory/peak_reserved_gb": torch.cuda.max_memory_reserved(device) / GB,
        }
    return {"memory/max_rss_gb": _max_rss_gb()}


def reset_peak(device: torch.device | str) -> None:
    """Start a new peak-memory window on CUDA (the CPU's max RSS cannot be reset)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
