"""Kernel tests run on CPU tensors through Triton's interpreter; they skip when Triton is missing.

TRITON_INTERPRET must be set before Triton decorates the first kernel, so it is set here, at
collection (`make test` sets it for the whole run as well).
"""

import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def cpu_kernels():
    """KernelOptions that run BitLinear's fused path on CPU tensors (the kernels interpreted)."""
    pytest.importorskip("triton")
    from bittern.kernels import available
    from bittern.nn import KernelOptions

    if not available("cpu"):
        pytest.skip("the kernels run on CPU tensors only under Triton's interpreter")
    return KernelOptions(devices=("cuda", "cpu"))
