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


def _check_codes(codes: torch.Tensor) -> torch.Tensor:
    """`codes` flattened, after checking they are int8 in {-1, 0, 1}."""
    if codes.dtype != torch.int8:
        raise ValueError(f"ternary codes must be int8, got {codes.dtype}")
    flat = codes.reshape(-1)
    if flat.numel() and (flat.min() < -1 or flat.max() > 1):
        raise ValueError("ternary codes must lie in {-1, 0, 1}")
    return flat


def _digits(codes: torch.Tensor, per_byte: int) -> torch.Tensor:
    """code + 1 as uint8, flattened and zero-padded to a multiple of `per_byte`, shaped (-1, per_byte)."""
    d = (_check_codes(codes) + 1).to(torch.uint8)
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


def pack_2bit_rows(codes: torch.Tensor) -> torch.Tensor:
    """(rows, cols) ternary codes -> (rows, ceil(cols / 4)) uint8, each row packed and padded alone.

    No checks of the values (no host synchronization): the training-time packer of FSDP2's
    packed all-gather (bittern.distributed.packed) calls it on codes it has just made.
    """
    rows, cols = codes.shape
    d = (codes + 1).to(torch.uint8)
    pad = -cols % 4
    if pad:
        d = torch.cat([d, d.new_zeros(rows, pad)], dim=1)
    d = d.view(rows, -1, 4)
    return d[..., 0] | (d[..., 1] << 2) | (d[..., 2] << 4) | (d[..., 3] << 6)


def unpack_2bit_rows(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of `pack_2bit_rows`: int8 codes (rows, cols)."""
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=packed.device)
    d = (packed.unsqueeze(-1) >> shifts) & 3
    return d.reshape(packed.shape[0], -1)[:, :cols].to(torch.int8) - 1


def pack_2bit(codes: torch.Tensor) -> torch.Tensor:
    """Four ternary codes per byte: a 1-D uint8 tensor of ceil(numel / 4) bytes."""
    return pack_2bit_rows(_check_codes(codes).view(1, -1)).view(-1)


def unpack_2bit(packed: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Inverse of `pack_2bit`: int8 codes of `shape`."""
    n = _check_size(packed, tuple(shape), 4)
    return unpack_2bit_rows(packed.reshape(1, -1), n).reshape(shape)


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
