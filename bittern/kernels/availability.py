"""Where the fused kernels run in this process: a probe of the installed Triton and GPU.

`available("cuda")`: Triton is installed, a CUDA GPU with int8 tensor cores (sm_80+) is there,
Triton is not interpreting, and the kernels load (registering the `bittern` torch ops).
`available("cpu")`: only under Triton's interpreter (`TRITON_INTERPRET=1`), where the kernels run
on CPU tensors through numpy; a layer goes there only when its options name "cpu" (the tests and
the benchmarks' smoke runs do).

The answer describes the installed software and hardware, not any model, so each device type
is probed once (the first eager call) and then only read; a compiled graph never probes, it
reads what an eager call found (nothing yet: not available). Importing this module imports no
Triton.
"""

from __future__ import annotations

import warnings

import torch

_probed: dict[str, bool] = {}


def available(device_type: str) -> bool:
    """Whether the fused kernels run on tensors of `device_type` ("cuda", "cpu") here."""
    if torch.compiler.is_compiling():
        return _probed.get(device_type, False)
    if device_type not in _probed:
        _probed[device_type] = _probe(device_type)
    return _probed[device_type]


def _probe(device_type: str) -> bool:
    if device_type not in ("cuda", "cpu"):
        return False
    try:
        import triton
    except ImportError:
        return False
    interpreting = bool(triton.knobs.runtime.interpret)
    if device_type == "cpu":
        wanted = interpreting
    else:
        wanted = (
            not interpreting and torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)
        )
    if not wanted:
        return False
    try:
        from bittern.kernels import function  # noqa: F401  (loads the kernels, registers the torch ops)
    except Exception as e:  # a Triton or torch version the kernels do not load on
        warnings.warn(f"bittern.kernels unavailable, using the reference path: {e!r}", stacklevel=3)
        return False
    return True
