"""Kernel tests run on CPU tensors through Triton's interpreter; they skip when Triton is missing.

TRITON_INTERPRET must be set before Triton decorates the first kernel, so it is set here, at
collection (`make test` sets it for the whole run as well).
"""

import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def fast_on_cpu(monkeypatch):
    """Let BitLinear take the fused path on CPU tensors (the kernels run interpreted)."""
    pytest.importorskip("triton")
    import bittern.kernels.function  # noqa: F401
    from bittern.kernels import dispatch

    monkeypatch.setattr(dispatch, "FAST_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(dispatch, "_available", True)
    yield
    dispatch.clear_weight_cache()
