"""Modules: BitLinear, RMSNorm, convert() to swap nn.Linear for BitLinear, and the fast path's calls."""

from bittern.nn.bitlinear import BitLinear, BitLinearOptions, apply_shared
from bittern.nn.convert import bitlinear_layers, convert, set_quant_lambda
from bittern.nn.fastpath import KernelOptions
from bittern.nn.norm import RMSNorm
from bittern.nn.refresh import CodeRefresher, configure_fast_path, refresh_ternary_codes

__all__ = [
    "BitLinear",
    "BitLinearOptions",
    "CodeRefresher",
    "KernelOptions",
    "RMSNorm",
    "apply_shared",
    "bitlinear_layers",
    "configure_fast_path",
    "convert",
    "refresh_ternary_codes",
    "set_quant_lambda",
]
