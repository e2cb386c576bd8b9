"""Bit packing of ternary codes: 2 bits per weight (4 per byte) or base 3 (5 trits per byte, 1.6 bits).

Both take int8 codes in {-1, 0, 1} of any shape, flatten them (row-major), store `code + 1` and
pad the flat tail with zeros (code -1 -> stored 0). Unpacking needs the original shape.
2-bit layout: code i sits in byte i // 4 at bits 2 * (i % 4). Base-3 layout: byte j holds
codes 5j..5j+4 as the base-3 number sum(digit_k * 3^k), digit_k = code_{5j+k} + 1 (<= 242).
"""

from __future__ import annotations

import math

import torch

TRITS_PER_BYTE = 5
_POW3 = (1, 3, 9, 27, 81)


def _digits(codes: torch.Tensor, per_byte: int) -> torch.Tensor:
    """code + 1 as uint8, flattened and zero-padded to a multiple of `per_byte`, shaped (-1, per_byte)."""
    if codes.dtype != torch.int8:
        raise ValueError(f"ternary codes must be int8, got {codes.dtype}")
    flat = codes.reshape(-1)
    if flat.numel() and (flat.min() < -1 or flat.max() > 1):
        raise ValueError("ternary codes must lie in {-1, 0, 1}")
    d = (flat + 1).to(torch.uint8)
    pad = -d.numel() % per_byte
    if pad:
        d = torch.cat([d, d.new_zeros(pad)])
    return d.reshape(-1, per_byte)


def _check_size(packed: torch.Tensor, shape: tuple[int, ...], per_byte: int) -> int:
    n = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.numel() != -(-n // per_byte):
        raise ValueError(
            f"packed tensor of {packed.numel()} {packed.dtype} does not hold shape {tuple(shape)}"
        )
    return n


def pack_2bit(codes: torch.Tensor) -> torch.Tensor:
    """Four ternary codes per byte: a 1-D uint8 tensor of ceil(numel / 4) bytes."""
    d = _digits(codes, 4)
    return d[:, 0] | (d[:, 1] << 2) | (d[:, 2] << 4) | (d[:, 3] << 6)


def unpack_2bit(packed: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Inverse of `pack_2bit`: int8 codes of `shape`."""
    n = _check_size(packed, tuple(shape), 4)
    p = packed.reshape(-1, 1)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=packed.device)
    d = (p >> shifts) & 3
    return (d.reshape(-1)[:n].to(torch.int8) - 1).reshape(shape)


def pack_base3(codes: torch.Tensor) -> torch.Tensor:
    """Five ternary codes per byte (3^5 = 243 <= 256): a 1-D uint8 tensor of ceil(numel / 5) bytes."""
    d = _digits(codes, TRITS_PER_BYTE).to(torch.int16)
    pow3 = torch.tensor(_POW3, dtype=torch.int16, device=codes.device)
    return (d * pow3).sum(dim=1).to(torch.uint8)


def unpack_base3(packed: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Inverse of `pack_base3`: int8 codes of `shape`."""
    n = _check_size(packed, tuple(shape), TRITS_PER_BYTE)
    p = packed.to(torch.int16).reshape(-1, 1)
    pow3 = torch.tensor(_POW3, dtype=torch.int16, device=packed.device)
    d = (p // pow3) % 3
    return (d.reshape(-1)[:n].to(torch.int8) - 1).reshape(shape)
