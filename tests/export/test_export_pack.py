"""Bit-exact round trips of 2-bit and base-3 packing, and the layouts against a plain Python loop."""

from __future__ import annotations

import pytest
import torch

from bittern.export.pack import pack_2bit, pack_base3, unpack_2bit, unpack_base3

SHAPES = [(1,), (7,), (255,), (1023, 3), (5, 13), (3, 7, 11), (0,), (4, 256)]


def random_codes(shape, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 2, shape, generator=g, dtype=torch.int64).to(torch.int8)


@pytest.mark.parametrize("shape", SHAPES)
def test_2bit_round_trip_is_bit_exact(shape):
    codes = random_codes(shape)
    packed = pack_2bit(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-codes.numel() // 4)
    out = unpack_2bit(packed, codes.shape)
    assert out.dtype == torch.int8 and out.shape == codes.shape
    assert torch.equal(out, codes)


@pytest.mark.parametrize("shape", SHAPES)
def test_base3_round_trip_is_bit_exact(shape):
    codes = random_codes(shape, seed=1)
    packed = pack_base3(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-codes.numel() // 5)
    assert torch.equal(unpack_base3(packed, codes.shape), codes)


def test_layouts_match_a_python_loop():
    codes = random_codes((37,), seed=2)
    values = [int(c) + 1 for c in codes] + [0] * 3
    two_bit = [sum(values[4 * j + k] << (2 * k) for k in range(4)) for j in range(10)]
    base3 = [sum(values[5 * j + k] * 3**k for k in range(5)) for j in range(8)]
    assert pack_2bit(codes).tolist() == two_bit
    assert pack_base3(codes).tolist() == base3


def test_all_243_byte_values_decode_to_distinct_trits():
    codes = torch.cartesian_prod(*[torch.tensor([-1, 0, 1])] * 5).to(torch.int8)
    packed = pack_base3(codes)
    assert sorted(packed.tolist()) == list(range(243))
    assert torch.equal(unpack_base3(packed, codes.shape), codes)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError):
        pack_2bit(torch.tensor([2], dtype=torch.int8))
    with pytest.raises(ValueError):
        pack_2bit(torch.tensor([1.0]))
    with pytest.raises(ValueError):
        unpack_2bit(torch.zeros(3, dtype=torch.uint8), (13,))
