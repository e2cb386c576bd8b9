"""Ternary weight quantization on the device against bittern.quant.ternarize."""

import pytest
import torch

pytest.importorskip("triton")

from bittern.kernels import weightquant  # noqa: E402
from bittern.kernels.weightquant import ternarize_reference, ternarize_weight  # noqa: E402


def _w(rows: int, cols: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g) * 0.05 * (torch.rand(rows, 1, generator=g) + 0.5)).to(dtype)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mult", [1.0, 1.5])
def test_matches_reference(per_channel, dtype, mult):
    w = _w(24, 40, dtype)
    codes, gamma = ternarize_weight(w, mult, per_channel)
    ref_codes, ref_gamma = ternarize_reference(w, mult, per_channel)
    assert codes.dtype == torch.int8 and codes.shape == w.shape and gamma.dtype == torch.float32
    torch.testing.assert_close(gamma, ref_gamma, rtol=1e-6, atol=0)
    # codes bit-exact given the same gamma (the mean's float sum order may differ)
    exact = torch.clamp(torch.round(w.float() / (gamma[:, None] if per_channel else gamma)), -1, 1)
    assert torch.equal(codes, exact.to(torch.int8))
    assert torch.equal(codes, ref_codes)


def test_many_partial_sums():
    w = _w(96, 200, seed=1)  # 19200 elements: several partial sums reduced inside the second launch
    codes, gamma = ternarize_weight(w)
    ref_codes, ref_gamma = ternarize_reference(w, 1.0, False)
    torch.testing.assert_close(gamma, ref_gamma, rtol=1e-6, atol=0)
    assert torch.equal(codes, ref_codes)


def test_tiny_weight_clamps_gamma():
    codes, gamma = ternarize_weight(torch.full((4, 8), 1e-7))
    assert gamma.item() == pytest.approx(1e-5) and not codes.any()


@pytest.mark.parametrize("per_channel", [False, True])
def test_dequantize_matches_reference(per_channel):
    codes, gamma = ternarize_weight(_w(24, 40), 1.0, per_channel)
    for dtype in (torch.float32, torch.bfloat16):
        out = weightquant.dequantize_weight(codes, gamma, dtype)
        assert torch.equal(out, weightquant.dequantize_weight_reference(codes, gamma, dtype))
