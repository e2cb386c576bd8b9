"""The reference quantizers against plain numpy formulas (docs/design.md, section 1)."""

import numpy as np
import pytest
import torch

from bittern.quant import (
    dequantize_activations,
    dequantize_weight,
    quantize_activations,
    ternarize,
)
from bittern.quant.core import weight_scale

EPS = 1e-5


def ref_ternarize(w: np.ndarray, granularity: str, group_size: int = 0, mult: float = 1.0):
    """gamma = clamp(mean|W|, 1e-5) * mult; codes = clip(rint(W / gamma), -1, 1) (numpy, fp64)."""
    w = w.astype(np.float64)
    out_f, in_f = w.shape
    if granularity == "tensor":
        gamma = np.maximum(np.abs(w).mean(), EPS) * mult
        codes = np.clip(np.rint(w / gamma), -1, 1)
        deq = codes * gamma
    elif granularity == "channel":
        gamma = np.maximum(np.abs(w).mean(axis=1, keepdims=True), EPS) * mult
        codes = np.clip(np.rint(w / gamma), -1, 1)
        deq = codes * gamma
    else:
        wg = w.reshape(out_f, in_f // group_size, group_size)
        gamma = np.maximum(np.abs(wg).mean(axis=2, keepdims=True), EPS) * mult
        codes = np.clip(np.rint(wg / gamma), -1, 1)
        deq = (codes * gamma).reshape(out_f, in_f)
        codes = codes.reshape(out_f, in_f)
    return codes, gamma, deq


def ref_quantize_activations(x: np.ndarray):
    """s = 127 / clamp(max|x_row|, 1e-5); codes = clip(rint(x * s), -128, 127) (numpy, fp32)."""
    x = x.astype(np.float32)
    amax = np.maximum(np.abs(x).max(axis=-1, keepdims=True), np.float32(EPS))
    s = np.float32(127.0) / amax
    codes = np.clip(np.rint(x * s), -128, 127)
    return codes, s


def _weight(shape=(12, 32), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 0.05


@pytest.mark.parametrize(
    "granularity,group_size",
    [("tensor", 0), ("channel", 0), ("group", 8), ("group", 16)],
)
@pytest.mark.parametrize("mult", [1.0, 1.7])
def test_ternarize_matches_numpy(granularity, group_size, mult):
    w = _weight()
    kwargs = dict(granularity=granularity, gamma_multiplier=mult)
    if group_size:
        kwargs["group_size"] = group_size
    codes, scale = ternarize(w, **kwargs)
    ref_codes, ref_gamma, ref_deq = ref_ternarize(w.numpy(), granularity, group_size, mult)

    assert codes.dtype == torch.int8
    assert codes.shape == w.shape
    assert set(codes.unique().tolist()) <= {-1, 0, 1}
    np.testing.assert_array_equal(codes.numpy(), ref_codes)
    assert scale.dtype == torch.float32
    assert scale.shape == ref_gamma.shape
    np.testing.assert_allclose(scale.numpy(), ref_gamma, rtol=1e-6)
    np.testing.assert_allclose(dequantize_weight(codes, scale).numpy(), ref_deq, rtol=1e-6)


def test_ternarize_uses_all_three_codes():
    codes, _ = ternarize(_weight())
    assert set(codes.unique().tolist()) == {-1, 0, 1}


def test_ternarize_per_channel_differs_from_per_tensor():
    w = _weight()
    w[0] *= 20.0  # one loud row dominates the per-tensor scale
    per_tensor, _ = ternarize(w, "tensor")
    per_channel, _ = ternarize(w, "channel")
    assert (per_tensor[1:] == 0).float().mean() > (per_channel[1:] == 0).float().mean()


def test_larger_gamma_multiplier_gives_at_least_as_many_zeros():
    w = _weight((32, 64))
    zeros = [int((ternarize(w, gamma_multiplier=m)[0] == 0).sum()) for m in (0.5, 1.0, 1.5, 2.0)]
    assert zeros == sorted(zeros)
    assert zeros[-1] > zeros[0]


def test_ternarize_all_zero_weight_uses_eps():
    w = torch.zeros(4, 8)
    codes, scale = ternarize(w)
    assert torch.equal(codes, torch.zeros(4, 8, dtype=torch.int8))
    assert scale.item() == pytest.approx(EPS)
    assert torch.isfinite(dequantize_weight(codes, scale)).all()
    codes_c, scale_c = ternarize(w, "channel")
    assert (codes_c == 0).all() and torch.allclose(scale_c, torch.full((4, 1), EPS))


@pytest.mark.parametrize("unit", [1.0, 0.25, 2.0**-6])
def test_ternarize_rounds_half_to_even(unit):
    # mean|W| = unit (a power of two), so W / gamma is exact: +-0.5, +-1.5, +-1, 0
    halves = torch.tensor([[0.5, -0.5, 1.5, -1.5, 1.0, -1.0, 1.0, 1.0]])
    w = halves * unit
    codes, scale = ternarize(w)
    assert scale.item() == unit
    # round-half-even: 0.5 -> 0, -0.5 -> 0, 1.5 -> 2 -> clamped 1, -1.5 -> -2 -> clamped -1
    assert codes.tolist() == [[0, 0, 1, -1, 1, -1, 1, 1]]


def test_ternarize_half_even_with_multiplier_and_per_channel():
    # row 0: mean|W| = 1, row 1: mean|W| = 0.5; multiplier 2 -> gamma 2 and 1 (exact)
    w = torch.tensor(
        [
            [1.0, -1.0, 3.0, -3.0, 0.0, 0.0, 0.0, 0.0],
            [0.5, -0.5, 2.5, 0.0, 0.0, 0.0, 0.0, 0.5],
        ]
    )
    codes, gamma = ternarize(w, "channel", gamma_multiplier=2.0)
    assert gamma.flatten().tolist() == [2.0, 1.0]
    # W / gamma = [.5, -.5, 1.5, -1.5, 0...] and [.5, -.5, 2.5, 0, ..., .5]
    assert codes.tolist() == [[0, 0, 1, -1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0, 0]]


def test_ternarize_bfloat16_input_gives_float32_scale():
    w = _weight().bfloat16()
    codes, scale = ternarize(w)
    ref_codes, ref_gamma, _ = ref_ternarize(w.float().numpy(), "tensor")
    assert scale.dtype == torch.float32
    np.testing.assert_array_equal(codes.numpy(), ref_codes)
    np.testing.assert_allclose(scale.item(), ref_gamma, rtol=1e-6)


def test_ternarize_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ternarize(_weight(), "row")
    with pytest.raises(ValueError):
        ternarize(_weight((4, 12)), "group", group_size=5)


def test_weight_scale_shapes():
    w = _weight((6, 16))
    assert weight_scale(w).shape == ()
    assert weight_scale(w, "channel").shape == (6, 1)
    assert weight_scale(w, "group", group_size=4).shape == (6, 4, 1)


def test_ternarize_does_not_track_gradients():
    w = _weight().requires_grad_()
    codes, scale = ternarize(w)
    assert not codes.requires_grad and not scale.requires_grad


@pytest.mark.parametrize("shape", [(5, 24), (2, 3, 16)])
def test_quantize_activations_matches_numpy(shape):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g) * 3.0
    codes, s = quantize_activations(x)
    ref_codes, ref_s = ref_quantize_activations(x.numpy())
    assert codes.dtype == torch.int8
    assert codes.shape == x.shape
    assert s.shape == (*shape[:-1], 1)
    np.testing.assert_array_equal(codes.numpy(), ref_codes)
    np.testing.assert_allclose(s.numpy(), ref_s, rtol=1e-6)  # torch: 127 * (1 / amax)
    # the row maximum maps to +-127 exactly, per token (last dim)
    assert (codes.abs().amax(dim=-1) == 127).all()
    np.testing.assert_allclose(dequantize_activations(codes, s).numpy(), ref_codes / ref_s, rtol=1e-6)


def test_quantize_activations_rounds_half_to_even():
    # row 0: max 127 -> s = 1; row 1: max 63.5 -> s = 2; x * s lands exactly on k + 0.5
    x = torch.tensor(
        [
            [127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 3.5, -126.5],
            [63.5, 0.25, 0.75, 1.25, -0.25, -1.25, -1.75, 10.25],
        ]
    )
    codes, s = quantize_activations(x)
    assert s.flatten().tolist() == [1.0, 2.0]
    assert codes.tolist() == [
        [127, 0, 2, 2, 0, -2, 4, -126],
        [127, 0, 2, 2, 0, -2, -4, 20],
    ]


def test_quantize_activations_zero_and_tiny_rows():
    x = torch.tensor([[0.0, 0.0, 0.0], [2e-6, -7e-6, 0.0]])
    codes, s = quantize_activations(x)
    assert torch.isfinite(s).all()
    assert s[0].item() == pytest.approx(127.0 / EPS)
    assert codes[0].tolist() == [0, 0, 0]
    ref_codes, _ = ref_quantize_activations(x.numpy())
    np.testing.assert_array_equal(codes.numpy(), ref_codes)  # eps-clamped scale: 25, -89, 0
    assert torch.isfinite(dequantize_activations(codes, s)).all()


def test_quantize_activations_bfloat16_input():
    x = (torch.randn(4, 16, generator=torch.Generator().manual_seed(2)) * 5).bfloat16()
    codes, s = quantize_activations(x)
    ref_codes, ref_s = ref_quantize_activations(x.float().numpy())
    assert s.dtype == torch.float32
    np.testing.assert_array_equal(codes.numpy(), ref_codes)
    np.testing.assert_allclose(s.numpy(), ref_s, rtol=1e-6)  # torch: 127 * (1 / amax)
