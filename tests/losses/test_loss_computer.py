"""LossComputer: the per-micro-batch total, its logged parts, and gradients reaching the student only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bittern.config import LossConfig
from bittern.data.tokenizer import ByteTokenizer
from bittern.models import ModelConfig, Transformer
from bittern.train.losses import (
    LossComputer,
    distill_kl,
    hidden_distill,
    margin_loss,
    pool_hidden,
    quant_regularizer,
)
from bittern.train.teacher import Teacher


def _model(quant: str, dim: int = 16, n_layers: int = 2, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        quant=quant, dim=dim, n_layers=n_layers, n_heads=2, n_kv_heads=1, ffn_dim=32, vocab_size=40
    )
    return Transformer(cfg.resolved())


def _teacher(dim: int = 16, n_layers: int = 2) -> Teacher:
    return Teacher(
        _model("none", dim, n_layers, seed=1).eval().requires_grad_(False), ByteTokenizer(), "test"
    )


def _batch():
    g = torch.Generator().manual_seed(2)
    return torch.randint(0, 40, (3, 8), generator=g), torch.randint(0, 40, (3, 8), generator=g)


def test_every_term_on():
    cfg = LossConfig(
        distill=0.4, temperature=2.0, distill_hidden=0.1, quant_reg=0.01, hard_token_ratio=0.5, margin=0.2
    )
    student, teacher = _model("ternary"), _teacher()
    lc = LossComputer(cfg, student_dim=16, student_layers=2)
    assert lc.needs_teacher and lc.needs_hidden and len(list(lc.parameters())) == 0
    x, y = _batch()
    logits, hiddens = student(x, return_hidden=True)
    t = teacher(x, hidden=True)
    assert not t.logits.requires_grad and not any(h.requires_grad for h in t.hiddens)
    total, parts = lc(logits, y, hiddens, t, model=student)

    per_token = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
    ce = per_token.sort(descending=True).values[:12].mean()  # hardest half of 24 tokens
    kd = distill_kl(logits, t.logits, 2.0)
    hid = hidden_distill(hiddens, t.hiddens)
    mar = margin_loss(pool_hidden(hiddens[-1]), pool_hidden(t.hiddens[-1]), 0.3)
    reg = quant_regularizer(student)
    want = 0.6 * ce + 0.4 * kd + 0.1 * hid + 0.01 * reg + 0.2 * mar
    torch.testing.assert_close(total, want)
    assert set(parts) == {
        "loss/ce",
        "loss/ce_all",
        "loss/distill",
        "loss/hidden",
        "loss/margin",
        "loss/quant_reg",
        "loss/total",
    }
    torch.testing.assert_close(parts["loss/ce_all"], per_token.mean())
    assert all(not v.requires_grad for v in parts.values())

    total.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in teacher.model.parameters())


def test_plain_ce_is_exactly_the_trainers_cross_entropy():
    student = _model("ternary")
    lc = LossComputer(LossConfig(), 16, 2)
    assert not lc.needs_teacher and not lc.needs_hidden
    x, y = _batch()
    logits = student(x)
    total, parts = lc(logits, y)
    assert torch.equal(total, F.cross_entropy(logits.float().flatten(0, 1), y.flatten()))
    assert set(parts) == {"loss/ce", "loss/total"}


def test_different_teacher_width_and_depth_uses_projections():
    cfg = LossConfig(distill=0.5, distill_hidden=1.0, margin=0.1)
    student, teacher = _model("ternary", dim=16, n_layers=2), _teacher(dim=24, n_layers=4)
    lc = LossComputer(cfg, student_dim=16, student_layers=2, teacher_dim=24, teacher_layers=4)
    assert len(lc.projections) == 2
    x, y = _batch()
    logits, hiddens = student(x, return_hidden=True)
    total, _ = lc(logits, y, hiddens, teacher(x, hidden=True), model=student)
    total.backward()
    assert all(p.grad is not None for p in lc.projections.parameters())
    assert all(p.grad is None for p in teacher.model.parameters())


def test_missing_inputs_are_refused():
    lc = LossComputer(LossConfig(distill=0.5), 16, 2)
    logits, y = torch.randn(1, 4, 40), torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="teacher"):
        lc(logits, y)
    with pytest.raises(ValueError, match="student model"):
        LossComputer(LossConfig(quant_reg=0.1), 16, 2)(logits, y)


def test_return_hidden_keeps_logits():
    model = _model("ternary")
    x, _ = _batch()
    logits, hiddens = model(x, return_hidden=True)
    assert torch.equal(logits, model(x)) and len(hiddens) == 2 and hiddens[0].shape == (3, 8, 16)
