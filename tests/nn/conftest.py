"""The fast-path tests run BitLinear's fused kernels on CPU tensors through Triton's interpreter.

TRITON_INTERPRET must be set before Triton decorates the first kernel, so it is set here, at
collection (`make test` sets it for the whole run as well); those tests skip without Triton.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
