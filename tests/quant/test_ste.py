"""Straight-through estimators and the progressive-quantization blend."""

import numpy as np
import pytest
import torch

from bittern.quant import fake_quant_activations, fake_quant_weight


def _ref_weight_deq(w: torch.Tensor) -> torch.Tensor:
    """codes * gamma per tensor, written out: gamma = max(mean|W|, 1e-5)."""
    wn = w.detach().double().numpy()
    gamma = max(np.abs(wn).mean(), 1e-5)
    return torch.from_numpy(np.clip(np.rint(wn / gamma), -1, 1) * gamma).float()


def _ref_act_deq(x: torch.Tensor) -> torch.Tensor:
    """codes / s per token, s = 127 / max(max|x_row|, 1e-5)."""
    xn = x.detach().numpy().astype(np.float32)
    s = np.float32(127) / np.maximum(np.abs(xn).max(-1, keepdims=True), np.float32(1e-5))
    return torch.from_numpy(np.clip(np.rint(xn * s), -128, 127) / s).float()


def _w(seed=0):
    return torch.randn(8, 16, generator=torch.Generator().manual_seed(seed)) * 0.1


def _x(seed=1):
    return torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ste", ["detach", "function"])
@pytest.mark.parametrize("lam", [1.0, 0.5, 0.25])
def test_fake_quant_weight_forward_is_the_blend(ste, lam):
    w = _w()
    out = fake_quant_weight(w, lam, ste=ste)
    expected = w + lam * (_ref_weight_deq(w) - w)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("ste", ["detach", "function"])
@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_fake_quant_activations_forward_is_the_blend(ste, lam):
    x = _x()
    out = fake_quant_activations(x, lam, ste=ste)
    expected = x + lam * (_ref_act_deq(x) - x)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("ste", ["detach", "function"])
def test_lambda_zero_is_identity(ste):
    w, x = _w(), _x()
    assert torch.equal(fake_quant_weight(w, 0.0, ste=ste), w)
    assert torch.equal(fake_quant_activations(x, 0.0, ste=ste), x)


@pytest.mark.parametrize("ste", ["detach", "function"])
@pytest.mark.parametrize("lam", [1.0, 0.3, 0.0])
def test_gradient_passes_straight_through(ste, lam):
    w = _w().requires_grad_()
    x = _x().requires_grad_()
    gw = torch.randn(w.shape, generator=torch.Generator().manual_seed(5))
    gx = torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    ((fake_quant_weight(w, lam, ste=ste) * gw).sum()).backward()
    ((fake_quant_activations(x, lam, ste=ste) * gx).sum()).backward()
    assert torch.equal(w.grad, gw)  # round and clamp treated as identity
    assert torch.equal(x.grad, gx)


def test_detach_and_function_forms_agree_exactly():
    for lam in (1.0, 0.7):
        outs, grads = [], []
        for ste in ("detach", "function"):
            w = _w().requires_grad_()
            x = _x().requires_grad_()
            y = fake_quant_activations(x, lam, ste=ste) @ fake_quant_weight(w, lam, ste=ste).T
            y.pow(2).sum().backward()
            outs.append(y.detach())
            grads.append((w.grad, x.grad))
        assert torch.equal(outs[0], outs[1])
        assert torch.equal(grads[0][0], grads[1][0])
        assert torch.equal(grads[0][1], grads[1][1])


def test_lambda_as_tensor_matches_float():
    w = _w()
    assert torch.equal(fake_quant_weight(w, torch.tensor(0.5)), fake_quant_weight(w, 0.5))


def test_unknown_ste_form_rejected():
    with pytest.raises(ValueError):
        fake_quant_weight(_w(), ste="magic")
    with pytest.raises(ValueError):
        fake_quant_activations(_x(), ste="magic")
