"""The fp16 dynamic loss scaler's exact sequence, and the gradient-norm-driven alpha."""

from __future__ import annotations

import pytest
import torch

from bittern.config import LossScaleConfig
from bittern.train.scaling import DynamicLossScaler, alpha_scale

CFG = LossScaleConfig(fp16_init=8.0, fp16_growth=2.0, fp16_backoff=0.5, fp16_growth_interval=2)


def test_scale_sequence():
    scaler = DynamicLossScaler(CFG)
    steps = [True, True, False, True, False, True, True, True, True]
    expected = [8.0, 16.0, 8.0, 8.0, 4.0, 4.0, 8.0, 8.0, 16.0]
    seen = []
    for ok in steps:
        scaler.update(ok)
        seen.append(scaler.scale)
    assert seen == expected


def test_state_dict_round_trip():
    scaler = DynamicLossScaler(CFG)
    scaler.update(True)
    restored = DynamicLossScaler(CFG)
    restored.load_state_dict(scaler.state_dict())
    restored.update(True)
    assert restored.scale == 16.0


def test_scale_loss_and_unscale():
    scaler = DynamicLossScaler(CFG)
    assert float(scaler.scale_loss(torch.tensor(2.0))) == 16.0
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([8.0, 16.0])
    q = torch.nn.Parameter(torch.zeros(1))
    assert scaler.unscale_and_check([p, q]) is True
    assert p.grad.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_overflow_detected(bad):
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([1.0, bad])
    assert DynamicLossScaler(CFG).unscale_and_check([p]) is False


@pytest.mark.parametrize(("norm", "alpha"), [(0.0, 2.0), (0.005, 1.5), (0.01, 1.0), (0.02, 1.0)])
def test_alpha_scale(norm, alpha):
    cfg = LossScaleConfig(alpha=True, alpha_threshold=0.01, alpha_max=2.0)
    assert alpha_scale(norm, cfg) == pytest.approx(alpha)


def test_alpha_scale_capped_by_alpha_max():
    assert alpha_scale(0.0, LossScaleConfig(alpha_threshold=0.01, alpha_max=1.25)) == 1.25
