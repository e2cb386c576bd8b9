"""The 1.58-bit math: ternary weights, int8 activations, straight-through estimators."""

from bittern.quant.core import (
    ACT_QMAX,
    ACT_QMIN,
    EPS,
    dequantize_activations,
    dequantize_weight,
    quantize_activations,
    ternarize,
)
from bittern.quant.ste import fake_quant_activations, fake_quant_weight

__all__ = [
    "ACT_QMAX",
    "ACT_QMIN",
    "EPS",
    "dequantize_activations",
    "dequantize_weight",
    "fake_quant_activations",
    "fake_quant_weight",
    "quantize_activations",
    "ternarize",
]
