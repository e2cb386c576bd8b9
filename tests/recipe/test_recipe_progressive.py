"""Progressive-quantization lambda schedules, and setting lambda on a model's BitLinears."""

from __future__ import annotations

import pytest

from bittern.config import ProgressiveConfig
from bittern.models import ModelConfig, build_model
from bittern.nn import BitLinear
from bittern.train.progressive import apply_quant_lambda, quant_lambda


def test_none_is_quantized_throughout():
    cfg = ProgressiveConfig(schedule="none")
    assert quant_lambda(0, 1000, cfg) == 1.0
    assert quant_lambda(999, 1000, cfg) == 1.0


@pytest.mark.parametrize(("step", "lam"), [(0, 0.0), (50, 0.5), (100, 1.0), (150, 1.0)])
def test_linear(step, lam):
    assert quant_lambda(step, 1000, ProgressiveConfig(schedule="linear", warmup_steps=100)) == pytest.approx(
        lam
    )


@pytest.mark.parametrize(("step", "lam"), [(0, 0.0), (199, 0.0), (200, 0.0), (250, 0.5), (300, 1.0)])
def test_linear_from_start_step(step, lam):
    cfg = ProgressiveConfig(schedule="linear", warmup_steps=100)
    assert quant_lambda(step, 1000, cfg, start_step=200) == pytest.approx(lam)


STEPPED = ProgressiveConfig(schedule="stepped", start_frac=0.1, interval=100, delta=0.1)


@pytest.mark.parametrize(
    ("step", "lam"),
    [(0, 0.0), (99, 0.0), (100, 0.1), (199, 0.1), (200, 0.2), (950, 0.9), (999, 0.9), (1000, 1.0)],
)
def test_stepped(step, lam):
    assert quant_lambda(step, 1000, STEPPED) == pytest.approx(lam)


@pytest.mark.parametrize(("step", "lam"), [(499, 0.0), (500, 0.1), (650, 0.2), (1399, 0.9), (1400, 1.0)])
def test_stepped_from_start_step(step, lam):
    assert quant_lambda(step, 1000, STEPPED, start_step=500) == pytest.approx(lam)


def test_apply_quant_lambda_sets_every_bitlinear():
    cfg = ModelConfig(
        preset="tiny", dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=32, vocab_size=100
    )
    model = build_model(cfg.resolved())
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    assert len(layers) == 14
    apply_quant_lambda(model, 0.3, activations=True)
    assert all(float(m.weight_lambda) == pytest.approx(0.3) for m in layers)
    assert all(float(m.act_lambda) == pytest.approx(0.3) for m in layers)
    apply_quant_lambda(model, 0.6, activations=False)
    assert all(float(m.weight_lambda) == pytest.approx(0.6) for m in layers)
    assert all(float(m.act_lambda) == 1.0 for m in layers)
