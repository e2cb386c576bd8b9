"""The TMA persistent int8 GEMM of benchmarks/int8_gemm_sweep.py, run by Triton's interpreter on CPU tensors,
against the exact int64 reference with the fused rescale."""

import pytest
import torch

pytest.importorskip("triton")

from benchmarks.int8_gemm_sweep import TmaConfig, tma_int8_mm  # noqa: E402
from bittern.kernels.int8_mm import int8_mm_reference  # noqa: E402

CONFIGS = [
    TmaConfig(32, 32, 32, 4, 1),
    TmaConfig(32, 32, 32, 4, 1, subtile=True),
    TmaConfig(16, 32, 64, 4, 1, host_desc=True, subtile=True),
    TmaConfig(32, 16, 32, 4, 1, tma_store=False),
    TmaConfig(32, 32, 32, 4, 1, persistent=False),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.label())
def test_tma_kernel_matches_reference(cfg):
    # ragged M and N, and K = 80 ends in a partial K tile (the descriptor pads it with zeros)
    M, N, K = 70, 72, 80
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (M, K), generator=g).to(torch.int8)
    b = torch.randint(-1, 2, (N, K), generator=g).to(torch.int8)
    b[0] = 127  # extreme codes too
    a[0] = -128
    row = torch.rand(M, generator=g) * 100 + 1
    col = torch.rand(N, generator=g) * 0.1
    out = tma_int8_mm(a, b, row, col, cfg, num_sms=3)  # 3 programs: each loops over several tiles
    assert torch.equal(out, int8_mm_reference(a, b, row, col, torch.bfloat16))
