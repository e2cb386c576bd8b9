"""int8 quantization of the output gradient (the backward's int8 options) against its reference."""

import pytest
import torch

pytest.importorskip("triton")

from bittern.kernels import gradquant  # noqa: E402


def _grad(rows: int, cols: int, dtype=torch.bfloat16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g) * 1e-3).to(dtype)


@pytest.mark.parametrize("per_n", [False, True])
def test_rows_match_reference(per_n):
    grad = _grad(11, 40)
    col = torch.rand(40 if per_n else 1, generator=torch.Generator().manual_seed(1)) * 0.05
    codes, scale = gradquant.quantize_grad_rows(grad, col)
    ref_codes, ref_scale = gradquant.quantize_grad_rows_reference(grad, col)
    assert torch.equal(codes, ref_codes) and torch.equal(scale, ref_scale)


def test_columns_match_reference_transposed():
    grad = _grad(70, 45, seed=2)  # two row tiles and a partial column tile
    x_scale = torch.rand(70, generator=torch.Generator().manual_seed(3)) * 100 + 1
    codes, scale = gradquant.quantize_grad_cols(grad, x_scale)
    ref_codes, ref_scale = gradquant.quantize_grad_cols_reference(grad, x_scale)
    assert codes.shape == (45, 70) and codes.is_contiguous()
    assert torch.equal(codes, ref_codes) and torch.equal(scale, ref_scale)
