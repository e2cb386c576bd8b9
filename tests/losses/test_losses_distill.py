"""distill_kl, chunked over the vocabulary, equals T^2 * KL(teacher || student) and its gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bittern.train.losses import combine_ce_distill, distill_kl


def direct_kl(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean over tokens of sum_v p_t (log p_t - log p_s), written out in full."""
    log_ps = torch.log_softmax(s / temperature, dim=-1)
    log_pt = torch.log_softmax(t / temperature, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    return temperature**2 * kl.mean()


def test_hand_made_two_token_vocab():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[0.0, 2.0 * torch.log(torch.tensor(3.0))]])  # T=2: teacher probs (1/4, 3/4)
    # KL((1/4, 3/4) || (1/2, 1/2)) = 1/4 ln(1/2) + 3/4 ln(3/2); times T^2 = 4
    expected = 4 * (0.25 * torch.log(torch.tensor(0.5)) + 0.75 * torch.log(torch.tensor(1.5)))
    torch.testing.assert_close(distill_kl(s, t, temperature=2.0, vocab_chunk=1), expected)


@pytest.mark.parametrize("chunk", [0, 1, 7, 16, 64])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_equals_direct_computation_and_gradient(chunk, temperature):
    g = torch.Generator().manual_seed(0)
    s = (torch.randn(2, 5, 37, generator=g) * 3).requires_grad_()
    t = torch.randn(2, 5, 37, generator=g) * 3
    got = distill_kl(s, t, temperature, chunk)
    (grad,) = torch.autograd.grad(got, s)
    s2 = s.detach().clone().requires_grad_()
    want = direct_kl(s2, t, temperature)
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, s2.grad, rtol=1e-5, atol=1e-7)


def test_float64_gradient_exact():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 11, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 11, generator=g, dtype=torch.float64)
    (got,) = torch.autograd.grad(distill_kl(s, t, 1.5, 4), s)
    (want,) = torch.autograd.grad(direct_kl(s, t, 1.5), s)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_second_backward_is_a_clear_error():
    s = torch.randn(2, 5, requires_grad=True)
    loss = distill_kl(s, torch.randn(2, 5), 1.0, 2)
    loss.backward(retain_graph=True)  # the gradient buffer is scaled in place, then released
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


def test_zero_when_equal_and_teacher_gets_no_grad():
    s = torch.randn(4, 9, requires_grad=True)
    t = s.detach().clone().requires_grad_()
    loss = distill_kl(s, t, 1.0, 4)
    assert loss.abs().item() < 1e-6
    loss.backward()
    assert t.grad is None and s.grad is not None


def test_padded_vocab_is_cut_to_the_narrower():
    s, t = torch.randn(3, 10), torch.randn(3, 12)
    torch.testing.assert_close(distill_kl(s, t, 1.0, 4), direct_kl(s, t[:, :10], 1.0))


def test_bf16_logits_give_bf16_gradient():
    s = torch.randn(4, 20).bfloat16().requires_grad_()
    t = torch.randn(4, 20).bfloat16()
    loss = distill_kl(s, t, 1.0, 8)
    loss.backward()
    assert loss.dtype == torch.float32 and s.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, direct_kl(s.detach().float(), t.float(), 1.0), rtol=1e-4, atol=1e-5)


def test_combined():
    logits, targets = torch.randn(6, 10), torch.randint(0, 10, (6,))
    ce = F.cross_entropy(logits, targets)
    kd = distill_kl(logits, torch.randn(6, 10), 2.0)
    torch.testing.assert_close(combine_ce_distill(ce, kd, 0.3), 0.7 * ce + 0.3 * kd)
