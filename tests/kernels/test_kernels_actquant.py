"""Fused RMSNorm + int8 activation quantization against its PyTorch reference (and the layer's)."""

import pytest
import torch

pytest.importorskip("triton")

from bittern.kernels import actquant  # noqa: E402
from bittern.nn import RMSNorm  # noqa: E402
from bittern.quant import quantize_activations  # noqa: E402

EPS = 1e-5
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _x(rows: int, cols: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(rows, 1, generator=g) * 4 + 0.01  # rows of very different magnitudes
    return (torch.randn(rows, cols, generator=g) * scale).to(dtype)


def _norm_weight(cols: int, dtype: torch.dtype) -> torch.Tensor:
    return (torch.rand(cols, generator=torch.Generator().manual_seed(1)) + 0.5).to(dtype)


def test_reference_is_the_layer_math():
    x, w = _x(5, 24, torch.bfloat16), _norm_weight(24, torch.float32)
    norm = RMSNorm(24, EPS)
    with torch.no_grad():
        norm.weight.copy_(w)
    codes, scale = quantize_activations(norm(x))
    ref = actquant.rmsnorm_quant_reference(x, w, EPS)
    assert torch.equal(ref[0], codes) and torch.equal(ref[1], scale.squeeze(-1))


@pytest.mark.parametrize("x_dtype", DTYPES)
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16, None])
def test_forward_matches_reference(x_dtype, w_dtype):
    cols = 40  # not a power of two: the row is masked
    x = _x(7, cols, x_dtype)
    w = None if w_dtype is None else _norm_weight(cols, w_dtype)
    codes, scale, rstd = actquant.rmsnorm_quant(x, w, EPS)
    ref_codes, ref_scale, ref_rstd = actquant.rmsnorm_quant_reference(x, w, EPS)
    assert codes.dtype == torch.int8 and scale.dtype == rstd.dtype == torch.float32
    torch.testing.assert_close(rstd, ref_rstd, rtol=3e-7, atol=0)
    # given the kernel's rstd, codes and scales are bit-exact (only rstd's float sum may differ)
    if w is not None:
        y = w * (x.float() * rstd[:, None]).to(x.dtype)
        ref_codes, ref_scale = (t.reshape(ref_codes.shape[0], -1) for t in quantize_activations(y))
        ref_scale = ref_scale.squeeze(-1)
    assert torch.equal(codes, ref_codes)
    assert torch.equal(scale, ref_scale)


def test_forward_rounds_half_to_even():
    # amax 127 gives s = 1, so the codes are round(x) exactly: halves go to the even neighbour
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.0]])
    codes, scale, _ = actquant.rmsnorm_quant(x, None, EPS)
    assert scale.item() == 1.0
    assert codes.tolist() == [[0, 2, 2, 0, -2, -2, 126, 127]]


def test_forward_all_zero_row_uses_eps():
    x = torch.zeros(2, 16)
    x[1, 3] = 1.0
    codes, scale, _ = actquant.rmsnorm_quant(x, None, EPS)
    assert scale[0].item() == pytest.approx(127 / 1e-5, rel=1e-6) and not codes[0].any()
    assert codes[1, 3].item() == 127


@pytest.mark.parametrize("x_dtype", DTYPES)
def test_backward_matches_autograd_of_the_reference(x_dtype):
    x, w = _x(9, 40, x_dtype, seed=2), _norm_weight(40, torch.float32)
    grad = torch.randn(9, 40, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    _, _, rstd = actquant.rmsnorm_quant(x, w, EPS)
    dx, dw = actquant.rmsnorm_quant_backward(grad, x, w, rstd)
    ref_dx, ref_dw = actquant.rmsnorm_quant_backward_reference(grad, x, w, EPS)
    assert dx.dtype == x_dtype and dw.dtype == w.dtype
    tol = dict(rtol=1e-5, atol=1e-6) if x_dtype == torch.float32 else dict(rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(dx, ref_dx, **tol)
    torch.testing.assert_close(dw, ref_dw, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tile", [32, 64, 256])
def test_blocks_of_rows(monkeypatch, tile):
    # 1, 2 and 8 rows per program, M not a multiple of them; the backward's programs (2 * 4 on the
    # CPU) each loop over several blocks and sum their partial dweight
    monkeypatch.setattr(actquant, "FWD_TILE", tile)
    monkeypatch.setattr(actquant, "BWD_TILE", tile)
    x, w = _x(37, 24, torch.float32, seed=4), _norm_weight(24, torch.float32)
    codes, scale, rstd = actquant.rmsnorm_quant(x, w, EPS)
    ref_codes, ref_scale, ref_rstd = actquant.rmsnorm_quant_reference(x, w, EPS)
    assert torch.equal(codes, ref_codes)
    torch.testing.assert_close(scale, ref_scale, rtol=1e-6, atol=0)
    torch.testing.assert_close(rstd, ref_rstd, rtol=1e-6, atol=0)
    out = actquant.dequantize_rows(codes, scale, torch.bfloat16)
    assert torch.equal(out, actquant.dequantize_rows_reference(codes, scale, torch.bfloat16))
    grad = torch.randn(37, 24, generator=torch.Generator().manual_seed(5))
    dx, dw = actquant.rmsnorm_quant_backward(grad, x, w, rstd)
    ref_dx, ref_dw = actquant.rmsnorm_quant_backward_reference(grad, x, w, EPS)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dw, ref_dw, rtol=1e-5, atol=1e-5)


def test_backward_many_rows_per_program():
    # more rows than programs (2 * 4 on the CPU): each program loops and sums its partial dweight
    x, w = _x(37, 24, torch.float32, seed=4), _norm_weight(24, torch.float32)
    grad = torch.randn(37, 24, generator=torch.Generator().manual_seed(5))
    _, _, rstd = actquant.rmsnorm_quant(x, w, EPS)
    dx, dw = actquant.rmsnorm_quant_backward(grad, x, w, rstd)
    ref_dx, ref_dw = actquant.rmsnorm_quant_backward_reference(grad, x, w, EPS)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dw, ref_dw, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantize_rows_matches_reference(dtype):
    codes, scale, _ = actquant.rmsnorm_quant(_x(6, 40, torch.float32), None, EPS)
    out = actquant.dequantize_rows(codes, scale, dtype)
    assert torch.equal(out, actquant.dequantize_rows_reference(codes, scale, dtype))
