"""Kernel tests run on CPU tensors through Triton's interpreter; they skip when Triton is missing.

TRITON_INTERPRET must be set before Triton decorates the first kernel, so it is set here, at
collection (`make test` sets it for the whole run as well).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
