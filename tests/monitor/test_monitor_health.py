"""Ternary health stats against hand-computed counts on hand-set weights and inputs."""

import pytest
import torch
from torch import nn

from bittern.models import ModelConfig, build_model
from bittern.monitor import MetricsLogger, TernaryHealth, log_weight_histograms, unwrap
from bittern.nn import BitLinear

# gamma = mean|W| = 8 / 8 = 1: zeros where |w| < 0.5 (0.3, -0.3, 0.4), clamped where |w| > 1.5 (2.2, -1.8)
A_WEIGHT = [[2.2, -1.8, 1.0, -1.0], [1.0, 0.3, -0.3, 0.4]]
# gamma = (8 * 1.0 + 8 * 0.1) / 16 = 0.55: the 0.1s are zeros (0.18), the 1.0s are clamped (1.82)
B_WEIGHT = [[1.0, 0.1, -1.0, 0.1]] * 2 + [[-0.1, 1.0, -0.1, -1.0]] * 2


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = BitLinear(4, 2)
        self.b = BitLinear(4, 4)
        self.head = nn.Linear(4, 4)  # full precision: not tracked
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor(A_WEIGHT))
            self.b.weight.copy_(torch.tensor(B_WEIGHT))


def test_zero_and_clip_fractions_per_layer_and_parameter_weighted():
    stats = TernaryHealth().snapshot(Pair())
    assert stats["health/a/zero_frac"] == pytest.approx(3 / 8)
    assert stats["health/a/weight_clip_frac"] == pytest.approx(2 / 8)
    assert stats["health/b/zero_frac"] == pytest.approx(8 / 16)
    assert stats["health/b/weight_clip_frac"] == pytest.approx(8 / 16)
    assert stats["health/zero_frac"] == pytest.approx((3 + 8) / 24)
    assert stats["health/weight_clip_frac"] == pytest.approx((2 + 8) / 24)
    assert not any(k.startswith("health/head") for k in stats)
    assert "health/flip_frac" not in stats and "health/gamma_drift" not in stats


def test_flip_frac_counts_codes_changed_since_previous_snapshot():
    model, health = Pair(), TernaryHealth()
    health.snapshot(model)
    with torch.no_grad():
        w = model.a.weight
        w[0, 2] = -1.0  # code +1 -> -1
        w[0, 3], w[1, 3] = 0.4, -1.0  # codes -1 <-> 0 swap places; |W| sum (gamma) unchanged
    stats = health.snapshot(model)
    assert stats["health/a/flip_frac"] == pytest.approx(3 / 8)
    assert stats["health/b/flip_frac"] == 0.0
    assert stats["health/flip_frac"] == pytest.approx(3 / 24)
    assert stats["health/a/gamma_drift"] == pytest.approx(0.0, abs=1e-6)
    assert health.snapshot(model)["health/flip_frac"] == 0.0


def test_gamma_drift_after_scaling_and_weighted_overall():
    model, health = Pair(), TernaryHealth()
    health.snapshot(model)
    with torch.no_grad():
        model.a.weight.mul_(1.1)
        model.b.weight.mul_(0.5)
    stats = health.snapshot(model)
    assert stats["health/a/gamma_drift"] == pytest.approx(0.1, rel=1e-5)
    assert stats["health/b/gamma_drift"] == pytest.approx(0.5, rel=1e-5)
    assert stats["health/gamma_drift"] == pytest.approx((8 * 0.1 + 16 * 0.5) / 24, rel=1e-5)
    assert stats["health/flip_frac"] == 0.0  # scaling W scales gamma: no code changes


def test_set_baseline_makes_the_next_snapshot_relative_to_it():
    model, health = Pair(), TernaryHealth()
    health.snapshot(model)
    with torch.no_grad():
        model.a.weight.mul_(2.0)
    health.set_baseline(model)
    with torch.no_grad():
        model.a.weight.mul_(1.1)
    assert health.snapshot(model)["health/a/gamma_drift"] == pytest.approx(0.1, rel=1e-5)


def test_weight_clip_uses_the_group_scale():
    # groups of 2: gamma (1, 1) -> codes (1, 1); gamma (0.1, 0.5) = 0.3 -> 0.33 (zero), 1.67 (clamped)
    layer = BitLinear(4, 1, granularity="group", group_size=2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.0, 0.1, 0.5]]))
    stats = TernaryHealth().snapshot(nn.Sequential(layer))
    assert stats["health/weight_clip_frac"] == pytest.approx(1 / 4)
    assert stats["health/zero_frac"] == pytest.approx(1 / 4)


# per row, entries whose code hits +-127: row 0 three (|x| = absmax), row 1 one, row 2 all eight
ACT_INPUT = [
    [1.0, -1.0, 1.0, 0.4, 0.2, 0.0, 0.0, 0.0],
    [2.0, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [-3.0, 3.0, -3.0, 3.0, -3.0, 3.0, -3.0, 3.0],
]


def test_act_clip_frac_only_when_armed_and_one_capture_per_arm():
    layer = BitLinear(8, 3, norm=False)
    health = TernaryHealth().attach(layer)
    x = torch.tensor(ACT_INPUT)
    layer(x)
    assert "health/act_clip_frac" not in health.snapshot(layer)
    health.arm()
    assert health.armed
    layer(x)
    assert not health.armed
    layer(torch.ones(3, 8))  # not captured: would be 24 / 24
    stats = health.snapshot(layer)
    assert stats["health/act_clip_frac"] == pytest.approx(12 / 24)
    assert "health/act_clip_frac" not in health.snapshot(layer)  # consumed


def test_act_clip_frac_measures_the_normed_input():
    # norm weight 4 on the last column: row 2's last entry alone is the absmax -> 3 + 1 + 1 at the limit
    layer = BitLinear(8, 3)
    with torch.no_grad():
        layer.norm.weight[-1] = 4.0
    health = TernaryHealth().attach(layer)
    health.arm()
    layer(torch.tensor(ACT_INPUT).unsqueeze(0))
    assert health.snapshot(layer)["health/act_clip_frac"] == pytest.approx(5 / 24)


def test_hooks_leave_the_output_alone_and_detach():
    layer = BitLinear(8, 3)
    x = torch.randn(2, 5, 8)
    expected = layer(x)
    health = TernaryHealth().attach(layer)
    health.arm()
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    health.detach()
    assert not layer._forward_pre_hooks


def test_snapshot_builds_no_graph_and_names_match_through_wrappers():
    cfg = ModelConfig(preset="tiny", dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, vocab_size=64)
    model = build_model(cfg.resolved())
    health = TernaryHealth(per_layer=False).attach(model)
    health.arm()
    model(torch.randint(0, 64, (2, 8))).sum().backward()
    stats = health.snapshot(torch.compile(model))
    assert set(stats) == {"health/zero_frac", "health/weight_clip_frac", "health/act_clip_frac"}
    assert all(isinstance(v, float) for v in stats.values())
    assert 0 < stats["health/act_clip_frac"] < 1
    assert unwrap(torch.compile(model)) is model


def test_weight_histograms_subsampled_into_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = nn.Sequential(BitLinear(300, 300), BitLinear(300, 4))
    logger = MetricsLogger(tmp_path, tensorboard=True)
    log_weight_histograms(logger, 7, model)
    logger.close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"histograms": 0})
    acc.Reload()
    assert set(acc.Tags()["histograms"]) == {"weights/0", "weights/1"}
    big = acc.Histograms("weights/0")[0]
    assert big.step == 7
    assert big.histogram_value.num == 45000  # 90000 values, every 2nd one
    assert acc.Histograms("weights/1")[0].histogram_value.num == 1200


def test_histogram_is_a_no_op_without_tensorboard(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.histogram(1, "w", torch.ones(3))
    logger.close()
    assert not (tmp_path / "tensorboard").exists()
