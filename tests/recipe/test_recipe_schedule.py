"""LR and weight-decay schedules against values worked out by hand from their formulas."""

from __future__ import annotations

import math

import pytest

from bittern.config import ScheduleConfig
from bittern.train.schedule import lr_multiplier, warmup_steps, weight_decay_at


def _cfg(name: str, **kw) -> ScheduleConfig:
    return ScheduleConfig(name=name, **kw)


@pytest.mark.parametrize("name", ["cosine", "linear", "constant", "two_stage"])
def test_warmup_is_shared(name):
    cfg = _cfg(name, warmup_steps=10)
    assert lr_multiplier(0, 101, cfg) == pytest.approx(0.1)
    assert lr_multiplier(4, 101, cfg) == pytest.approx(0.5)
    assert lr_multiplier(9, 101, cfg) == pytest.approx(1.0)
    assert lr_multiplier(10, 101, cfg) == pytest.approx(1.0)


def test_warmup_frac():
    cfg = _cfg("cosine", warmup_frac=0.1)
    assert warmup_steps(cfg, 1000) == 100
    assert lr_multiplier(49, 1000, cfg) == pytest.approx(0.5)


def test_cosine():
    # 111 steps, warmup 10: the decay spans steps 10..110 (100 steps), min 0.1
    cfg = _cfg("cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_multiplier(60, 111, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(35, 111, cfg) == pytest.approx(0.1 + 0.9 * (1 + math.sqrt(0.5)) / 2)
    assert lr_multiplier(110, 111, cfg) == pytest.approx(0.1)


def test_linear():
    cfg = _cfg("linear", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_multiplier(35, 111, cfg) == pytest.approx(1 - 0.9 * 0.25)
    assert lr_multiplier(60, 111, cfg) == pytest.approx(0.55)
    assert lr_multiplier(110, 111, cfg) == pytest.approx(0.1)


def test_constant():
    cfg = _cfg("constant", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_multiplier(60, 111, cfg) == 1.0
    assert lr_multiplier(110, 111, cfg) == 1.0


def test_two_stage_drop_and_weight_decay():
    cfg = _cfg("two_stage", warmup_steps=100, min_lr_ratio=0.1, stage2_frac=0.5, stage2_lr_ratio=2 / 3)
    peak = 1.5e-3
    assert peak * lr_multiplier(100, 1000, cfg) == pytest.approx(1.5e-3)
    assert peak * lr_multiplier(499, 1000, cfg) == pytest.approx(1.5e-3)
    assert peak * lr_multiplier(500, 1000, cfg) == pytest.approx(1e-3)
    assert peak * lr_multiplier(999, 1000, cfg) == pytest.approx(1.5e-4)
    assert weight_decay_at(499, 1000, cfg, 0.1) == 0.1
    assert weight_decay_at(500, 1000, cfg, 0.1) == 0.0
    assert weight_decay_at(999, 1000, cfg, 0.1) == 0.0


def test_two_stage_cosine_midpoint():
    # 1002 steps: stage 2 starts at 501 and spans 501..1001 (500 steps); midpoint 751
    cfg = _cfg("two_stage", warmup_steps=0, min_lr_ratio=0.1, stage2_lr_ratio=2 / 3)
    assert lr_multiplier(0, 1002, cfg) == 1.0
    assert lr_multiplier(751, 1002, cfg) == pytest.approx(0.1 + (2 / 3 - 0.1) * 0.5)


def test_weight_decay_constant_elsewhere():
    for name in ("cosine", "linear", "constant"):
        assert weight_decay_at(999, 1000, _cfg(name), 0.1) == 0.1
