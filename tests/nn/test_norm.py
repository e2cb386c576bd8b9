"""RMSNorm against its formula, and against Hugging Face Llama's RMSNorm."""

import numpy as np
import torch

from bittern.nn import RMSNorm


def test_rmsnorm_matches_formula():
    x = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(0)) * 3.0
    x[1] *= 1e-3  # rows so small that eps matters
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        y = norm(x)
    xd, w = x.double().numpy(), norm.weight.detach().double().numpy()
    ref = xd / np.sqrt((xd**2).mean(-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(y.double().numpy(), ref, rtol=1e-6, atol=1e-6)


def test_rmsnorm_eps_keeps_zero_rows_finite():
    y = RMSNorm(8)(torch.zeros(2, 8))
    assert torch.equal(y, torch.zeros(2, 8))


def test_rmsnorm_matches_hugging_face_llama():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = (torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1)) * 4).bfloat16()
    ours, theirs = RMSNorm(16, eps=1e-5), LlamaRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2.0)
        theirs.weight.copy_(ours.weight)
        assert torch.equal(ours(x), theirs(x))
