"""One norm-and-quantize pass for BitLinears sharing an input, against each layer's reference."""

import pytest
import torch

pytest.importorskip("triton")

from bittern.kernels import actquant, sharednorm  # noqa: E402

EPS = 1e-5


def _inputs(M, K, layers, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(M, K, generator=g) * 3).to(dtype)
    weights = [torch.rand(K, generator=g) + 0.5 for _ in range(layers)]
    grads = [torch.randn(M, K, generator=g).to(dtype) for _ in range(layers)]
    return x, weights, grads


@pytest.mark.parametrize("layers", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tile", [64, 2048])
def test_group_equals_each_layer_reference(monkeypatch, layers, dtype, tile):
    # tile 64: 2 rows per program and several blocks per backward program (M not a multiple)
    monkeypatch.setattr(actquant, "FWD_TILE", tile)
    monkeypatch.setattr(actquant, "BWD_TILE", tile)
    x, weights, grads = _inputs(37, 24, layers, dtype)
    codes, scales, rstd = sharednorm.rmsnorm_quant_group(x, weights, EPS)
    ref_codes, ref_scales, ref_rstd = sharednorm.rmsnorm_quant_group_reference(x, weights, EPS)
    for c, r in zip(codes, ref_codes, strict=True):
        assert torch.equal(c, r)
    for s, r in zip(scales, ref_scales, strict=True):
        torch.testing.assert_close(s, r, rtol=1e-6, atol=0)
    torch.testing.assert_close(rstd, ref_rstd, rtol=1e-6, atol=0)
    # ... and exactly what the one-layer kernel gives each layer
    for w, c, s in zip(weights, codes, scales, strict=True):
        one_codes, one_scale, _ = actquant.rmsnorm_quant(x, w, EPS)
        assert torch.equal(c, one_codes) and torch.equal(s, one_scale)
    dx, dws = sharednorm.rmsnorm_quant_group_backward(grads, x, weights, rstd)
    ref_dx, ref_dws = sharednorm.rmsnorm_quant_group_backward_reference(grads, x, weights, EPS)
    assert dx.dtype == dtype and [d.dtype for d in dws] == [w.dtype for w in weights]
    # bf16: an rstd one float32 ulp from torch's can move a normalized value across a bf16 step
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(dx, ref_dx, **tol)
    for d, r in zip(dws, ref_dws, strict=True):
        torch.testing.assert_close(d, r, **tol)
    # against the one-layer kernel: the same dweight, and dx the float32 sum of its dx's
    singles = [actquant.rmsnorm_quant_backward(g, x, w, rstd) for g, w in zip(grads, weights, strict=True)]
    for d, (_, one_dw) in zip(dws, singles, strict=True):
        assert torch.equal(d, one_dw)
    summed = torch.stack([one_dx.float() for one_dx, _ in singles]).sum(0)
    # (bf16: the single kernel rounds each dx to bf16 before the sum, the group kernel once after)
    torch.testing.assert_close(dx.float(), summed, **tol)


def test_group_of_empty_input():
    x, weights, grads = _inputs(0, 8, 2, torch.float32)
    codes, scales, rstd = sharednorm.rmsnorm_quant_group(x, weights, EPS)
    assert [c.shape for c in codes] == [(0, 8)] * 2 and rstd.shape == (0,)
    dx, dws = sharednorm.rmsnorm_quant_group_backward(grads, x, weights, rstd)
    assert dx.shape == (0, 8) and all(torch.equal(d, torch.zeros(8)) for d in dws)
