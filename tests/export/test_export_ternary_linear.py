"""TernaryLinear frozen from a BitLinear computes what the BitLinear computes."""

from __future__ import annotations

import pytest
import torch

from bittern.nn import BitLinear
from bittern.nn.ternary_linear import TernaryLinear


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"norm": False},
        {"granularity": "channel"},
        {"granularity": "group", "group_size": 16},
        {"gamma_multiplier": 1.5},
    ],
)
@pytest.mark.parametrize("bias", [False, True])
def test_matches_bitlinear(options, bias):
    torch.manual_seed(0)
    layer = BitLinear(64, 24, bias=bias, **options)
    with torch.no_grad():
        if layer.norm is not None:
            layer.norm.weight.uniform_(0.5, 1.5)
        if bias:
            layer.bias.normal_()
    x = torch.randn(3, 5, 64)
    frozen = TernaryLinear.from_bitlinear(layer)
    assert frozen.codes.dtype == torch.int8
    assert set(frozen.codes.unique().tolist()) <= {-1, 0, 1}
    torch.testing.assert_close(frozen(x), layer(x), rtol=1e-5, atol=1e-5)


def test_keeps_gamma_that_reloading_codes_into_a_bitlinear_would_lose():
    torch.manual_seed(1)
    layer = BitLinear(32, 16)
    frozen = TernaryLinear.from_bitlinear(layer)
    gamma = layer.weight.abs().mean()
    torch.testing.assert_close(frozen.scale, gamma)
    dequant = frozen.codes.float() * frozen.scale
    assert not torch.isclose(dequant.abs().mean(), gamma)  # zeros make mean|codes * gamma| smaller


def test_refuses_full_precision_layer():
    with pytest.raises(ValueError):
        TernaryLinear.from_bitlinear(BitLinear(8, 8, quant="none"))
