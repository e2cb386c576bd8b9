"""MFU arithmetic, the peak-FLOPs table, memory figures."""

import pytest
import torch

from bittern.monitor import flops_per_token, memory_stats, mfu, peak_flops, reset_peak


def test_mfu_arithmetic():
    assert mfu(1000.0, 6e9, 1e13) == pytest.approx(0.6)
    assert mfu(1000.0, 6e9, None) is None
    assert mfu(1000.0, 6e9, 0.0) is None


def test_flops_per_token():
    assert flops_per_token(100, 2, 8, 16) == 6 * 100 + 12 * 2 * 8 * 16


def test_peak_flops_cpu_and_override():
    assert peak_flops("cpu") is None
    assert peak_flops(torch.device("cpu"), override_tflops=100.0) == pytest.approx(1e14)


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L40S", 362e12),
        ("Tesla T4", None),
    ],
)
def test_peak_flops_by_gpu_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops("cuda") == peak


def test_cpu_memory_is_the_process_max_rss():
    import resource

    stats = memory_stats("cpu")
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1024**3
    assert set(stats) == {"memory/max_rss_gb"}
    assert 0 < stats["memory/max_rss_gb"] <= rss_gb * 1.01 + 0.01
    reset_peak("cpu")  # a no-op, must not raise
