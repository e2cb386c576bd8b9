"""The training step is one object: the trainer and the throughput benchmark both run `TrainStep`."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bittern.config import ClipConfig, GuardConfig
from bittern.nn import BitLinear, configure_fast_path
from bittern.quant.core import ternarize
from bittern.train import Trainer
from bittern.train.clip import GradClipper
from bittern.train.guard import OK, SKIP, StabilityGuard
from bittern.train.step import TrainStep


@pytest.fixture
def step_calls(monkeypatch):
    """The TrainStep objects called, in order."""
    calls = []
    original = TrainStep.__call__

    def spy(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TrainStep, "__call__", spy)
    return calls


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 16, generator=g), torch.randn(4, 8, generator=g)) for _ in range(n)]


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(BitLinear(16, 24), nn.GELU(), BitLinear(24, 8))


def test_trainer_steps_through_its_train_step(tiny_config, tmp_path, step_calls):
    trainer = Trainer(tiny_config(train={"steps": 2, "eval_every": 2}), tmp_path / "run", progress=False)
    trainer.run()
    assert isinstance(trainer.step_fn, TrainStep)
    assert step_calls == [trainer.step_fn] * 2


def test_throughput_benchmark_times_the_trainers_step(monkeypatch, step_calls):
    from benchmarks import train_throughput as tt

    monkeypatch.setattr(tt, "DEVICE", "cpu")
    variant = next(v for v in tt.VARIANTS if v.name == "ref-eager")
    model, step = tt.variant_step("tiny", variant, "none", 2, 64, 16, "regional")
    assert isinstance(step.train_step, TrainStep)
    before = [p.detach().clone() for p in model.parameters()]
    loss = step(0)
    assert step_calls == [step.train_step] and math.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_step_averages_micro_batches_updates_and_refreshes_the_codes(cpu_kernels):
    model = _model()
    configure_fast_path(model, cpu_kernels)
    batches = _batches(2)
    with torch.no_grad():
        expect = sum(F.mse_loss(model(x), y).item() for x, y in batches) / 2
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)  # no version-counter bumps

    def loss(x, y):
        return F.mse_loss(model(x), y)

    outcome = TrainStep(model, optimizer, loss, GradClipper(ClipConfig()), accum=2)(batches)
    assert outcome.action == OK and outcome.loss == pytest.approx(expect, rel=1e-6)
    assert all(p.grad is None for p in model.parameters())
    for layer in (model[0], model[2]):  # the codes the next forward multiplies by: the new weights'
        codes, gamma = ternarize(layer.weight.detach(), "tensor")
        assert torch.equal(layer.ternary_codes, codes)
        torch.testing.assert_close(layer.ternary_gamma, gamma.reshape(-1), rtol=1e-6, atol=0)


def test_a_judged_skip_leaves_weights_and_codes_alone(cpu_kernels):
    model = _model()
    configure_fast_path(model, cpu_kernels)
    weights = [p.detach().clone() for p in model.parameters()]
    codes = [layer.ternary_codes.clone() for layer in (model[0], model[2])]
    after = []
    step = TrainStep(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        lambda x, y: F.mse_loss(model(x), y) * float("nan"),
        GradClipper(ClipConfig()),
        guard=StabilityGuard(GuardConfig()),
        after_update=[lambda: after.append(1)],
    )
    outcome = step(_batches(1))
    assert outcome.action == SKIP and after == []
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    assert all(
        torch.equal(c, layer.ternary_codes) for c, layer in zip(codes, (model[0], model[2]), strict=True)
    )
    assert all(p.grad is None for p in model.parameters())
