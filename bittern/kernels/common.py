"""What every Triton kernel here shares: interpreter detection, rounding, per-row int8 quantization.

Importing this module imports Triton; `bittern.kernels.availability` checks that Triton is there
before anything imports it. Under `TRITON_INTERPRET=1` the kernels run on the CPU through
Triton's interpreter (numpy), which has no libdevice and no run-time loop bounds: rounding
takes the magic-number route there, casts to bfloat16 round in integer arithmetic (the
interpreter truncates), every loop bound is a `tl.constexpr` (its loops cannot take a
run-time bound under numpy 2), and no mask is a vector `&` a scalar (Triton 3.9's interpreter
makes that int32, which its loads refuse).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import custom_op, triton_op, wrap_triton
from torch.utils._python_dispatch import _get_current_dispatch_mode
from triton.language.extra import libdevice

from bittern.quant.core import ACT_QMAX, ACT_QMIN, EPS

INTERPRET: bool = bool(triton.knobs.runtime.interpret)

# 1.5 * 2**23: (v + MAGIC) - MAGIC rounds any |v| < 2**22 to an integer, half to even, in float32.
MAGIC = 12582912.0

TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def launch(kernel):
    """`kernel`, launched as `launch(kernel)[grid](...)`: directly when eager, traceably when not.

    While torch.compile (or any tensor mode) traces a `kernel_op`'s body the launch goes
    through `wrap_triton`, so that Inductor launches the kernel from its generated code. An
    eager launch goes straight to Triton: `wrap_triton`'s own eager path costs hundreds of
    microseconds of host time per launch. The interpreter's kernels always launch directly.
    """
    return kernel if INTERPRET else _Launch(kernel)


def tracing() -> bool:
    """torch.compile (or another tensor mode) is tracing: tensors have no data, launches are recorded."""
    return torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None


class _Launch:
    def __init__(self, kernel) -> None:
        self.kernel = kernel

    def __getitem__(self, grid):
        return wrap_triton(self.kernel)[grid] if tracing() else self.kernel[grid]


def kernel_op(name: str):
    """Decorator registering a torch op whose body launches kernels through `launch`.

    On the GPU a `triton_op`, which torch.compile traces into (no Python op dispatch in the
    compiled code); under the interpreter an opaque `custom_op` (Inductor cannot compile
    interpreted kernels).
    """
    return (custom_op if INTERPRET else triton_op)(name, mutates_args=())


def bucket(n):
    """The autotuners' key for a token count: its next power of two (a symbolic size as it is)."""
    return triton.next_power_of_2(n) if isinstance(n, int) else n


def tl_dtype(dtype: torch.dtype):
    """The Triton dtype of a floating torch dtype."""
    return TL_DTYPES[dtype]


def row_warps(block: int) -> int:
    """Warps for a program that holds one row of `block` elements in registers."""
    return 4 if block <= 2048 else 8 if block <= 8192 else 16


def sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device (a small constant on the CPU, for the interpreter)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2


@triton.jit
def round_half_even(v, INTERPRET: tl.constexpr):
    """torch.round of float32 (half to even); on the GPU the rint instruction."""
    if INTERPRET:
        return (v + 12582912.0) - 12582912.0
    else:
        return libdevice.rint(v)


@triton.jit
def round_to(x, DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """float32 x cast to DTYPE, rounding to nearest even (the interpreter truncates to bfloat16)."""
    if INTERPRET and DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16) << 16
        x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)


@triton.jit
def absmax_quantize(y, INTERPRET: tl.constexpr):
    """int8 codes round(y * s) and s = 127 / max|y| (clamped at EPS) of one float32 row (padding 0)."""
    amax = tl.maximum(tl.max(tl.abs(y), axis=0), 1e-5)
    s = tl.math.div_rn(127.0, amax)
    q = round_half_even(y * s, INTERPRET)
    q = tl.minimum(tl.maximum(q, -128.0), 127.0)
    return q.to(tl.int8), s


@triton.jit
def absmax_quantize_rows(y, INTERPRET: tl.constexpr):
    """`absmax_quantize` of each row of a float32 block (rows, block): codes and s (rows,)."""
    amax = tl.maximum(tl.max(tl.abs(y), axis=1), 1e-5)
    s = tl.math.div_rn(tl.full(amax.shape, 127.0, tl.float32), amax)
    q = round_half_even(y * s[:, None], INTERPRET)
    q = tl.minimum(tl.maximum(q, -128.0), 127.0)
    return q.to(tl.int8), s


assert (EPS, ACT_QMIN, ACT_QMAX) == (1e-5, -128, 127), "the kernels hard-code these (quant/core.py)"
