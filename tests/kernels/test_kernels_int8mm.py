"""The int8 GEMM against an exact int64 matmul, with and without the fused rescale."""

import pytest
import torch

pytest.importorskip("triton")

from bittern.kernels.int8_mm import int8_mm, int8_mm_reference  # noqa: E402


def _codes(rows: int, cols: int, low: int, high: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high + 1, (rows, cols), generator=g).to(torch.int8)


@pytest.mark.parametrize("k", [64, 80])  # a whole number of K tiles, and a masked last tile
def test_int32_product_is_exact(k):
    a, b = _codes(37, k, -128, 127, 0), _codes(45, k, -128, 127, 1)
    out = int8_mm(a, b)
    assert out.dtype == torch.int32
    assert torch.equal(out, int8_mm_reference(a, b))


def test_extreme_values_do_not_overflow():
    a = torch.full((4, 96), -128, dtype=torch.int8)
    b = torch.full((3, 96), -128, dtype=torch.int8)
    assert (int8_mm(a, b) == 128 * 128 * 96).all()


@pytest.mark.parametrize("per_n", [False, True])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_rescale(per_n, out_dtype):
    a, b = _codes(33, 72, -128, 127, 2), _codes(20, 72, -1, 1, 3)
    g = torch.Generator().manual_seed(4)
    row = torch.rand(33, generator=g) * 100 + 1
    col = torch.rand(20 if per_n else 1, generator=g) * 0.1
    out = int8_mm(a, b, row, col, out_dtype)
    assert torch.equal(out, int8_mm_reference(a, b, row, col, out_dtype))


def test_row_scale_only_and_explicit_tiles():
    a, b = _codes(50, 96, -128, 127, 5), _codes(70, 96, -128, 127, 6)
    row = torch.rand(50, generator=torch.Generator().manual_seed(7)) + 0.5
    ref = int8_mm_reference(a, b, row, None, torch.float32)
    for config in [(16, 64, 32, 4, 1), (64, 16, 64, 4, 1)]:
        assert torch.equal(int8_mm(a, b, row, None, torch.float32, config=config), ref)


def test_empty_inner_dimension():
    out = int8_mm(torch.empty(3, 0, dtype=torch.int8), torch.empty(2, 0, dtype=torch.int8))
    assert torch.equal(out, torch.zeros(3, 2, dtype=torch.int32))
