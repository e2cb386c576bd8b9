"""MFU arithmetic, the peak-FLOPs table, memory figures."""

import pytest
import torch

from bittern.monitor import memory_stats, mfu, peak_flops, reset_peak


def test_mfu_arithmetic():
    assert mfu(1000.0, 6e9, 1e13) == pytest.approx(0.6)
    assert mfu(1000.0, 6e9, None) is None
    assert mfu(1000.0, 6e9, 0.0) is None


def test_flops_per_token():
    """The model's own count (what MFU uses): 6N plus 12 * layers * dim * seq (PaLM appendix B)."""
    from bittern.models import ModelConfig, build_model

    cfg = ModelConfig(
        preset="tiny",
        dim=8,
        n_layers=2,
        n_heads=2,
        n_kv_heads=1,
        ffn_dim=16,
        max_seq_len=32,
        vocab_size=50,
        vocab_multiple=1,
    ).resolved()
    model = build_model(cfg)
    n = sum(p.numel() for p in model.parameters()) - model.embed_tokens.weight.numel()
    assert model.flops_per_token(16) == 6 * n + 12 * 2 * 8 * 16


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
