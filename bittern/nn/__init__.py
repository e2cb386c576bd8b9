"""Modules: BitLinear, RMSNorm, and convert() to swap nn.Linear for BitLinear."""

from bittern.nn.bitlinear import BitLinear, BitLinearOptions, apply_shared
from bittern.nn.convert import bitlinear_layers, convert, set_quant_lambda
from bittern.nn.norm import RMSNorm

__all__ = [
    "BitLinear",
    "BitLinearOptions",
    "RMSNorm",
    "apply_shared",
    "bitlinear_layers",
    "convert",
    "set_quant_lambda",
]
