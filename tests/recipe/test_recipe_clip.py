"""Gradient clipping modes, the adaptive threshold sequence, and its checkpointed history."""

from __future__ import annotations

import math

import pytest
import torch

from bittern.config import ClipConfig
from bittern.train.clip import GradClipper, per_layer_grad_norms


def _params(*grads: list[float]) -> list[torch.nn.Parameter]:
    out = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(len(g)))
        p.grad = torch.tensor(g)
        out.append(p)
    return out


def _norm(params) -> float:
    return math.sqrt(sum(float((p.grad**2).sum()) for p in params))


def test_norm_mode_clips_to_max_norm():
    params = _params([3.0, 4.0], [12.0])
    out = GradClipper(ClipConfig(mode="norm", max_norm=1.0)).clip(params)
    assert float(out["grad_norm"]) == pytest.approx(13.0)
    assert float(out["clip_threshold"]) == 1.0
    assert _norm(params) == pytest.approx(1.0, rel=1e-5)
    assert params[0].grad.tolist() == pytest.approx([3 / 13, 4 / 13], rel=1e-5)


def test_norm_mode_leaves_small_gradients():
    params = _params([3.0, 4.0], [12.0])
    out = GradClipper(ClipConfig(mode="norm", max_norm=100.0)).clip(params)
    assert float(out["grad_norm"]) == pytest.approx(13.0)
    assert params[0].grad.tolist() == [3.0, 4.0]


def test_value_mode_clamps_elements():
    params = _params([3.0, -4.0, 0.5])
    out = GradClipper(ClipConfig(mode="value", value=1.0)).clip(params)
    assert float(out["grad_norm"]) == pytest.approx(math.sqrt(25.25))
    assert params[0].grad.tolist() == [1.0, -1.0, 0.5]


def test_layer_mode_clips_each_parameter():
    params = _params([3.0, 4.0], [0.3, 0.4])
    out = GradClipper(ClipConfig(mode="layer", max_norm=1.0)).clip(params)
    assert float(out["grad_norm"]) == pytest.approx(math.sqrt(25.25))
    assert params[0].grad.tolist() == pytest.approx([0.6, 0.8], rel=1e-5)
    assert params[1].grad.tolist() == pytest.approx([0.3, 0.4])


def test_none_mode_only_measures():
    params = _params([3.0, 4.0])
    out = GradClipper(ClipConfig(mode="none")).clip(params)
    assert float(out["grad_norm"]) == pytest.approx(5.0)
    assert params[0].grad.tolist() == [3.0, 4.0]


def _run(clipper: GradClipper, norms: list[float]) -> list[float]:
    """Clip a one-element gradient of each norm in turn; the thresholds used."""
    used = []
    for n in norms:
        out = clipper.clip(_params([n]))
        assert float(out["grad_norm"]) == pytest.approx(n) or not math.isfinite(n)
        used.append(float(out["clip_threshold"]))
    return used


def test_adaptive_threshold_sequence():
    # window 4 (so 4 norms are needed), factor 2: init until then, then 2 * median of the last 4
    clipper = GradClipper(
        ClipConfig(mode="adaptive", adaptive_init=0.5, adaptive_window=4, adaptive_factor=2)
    )
    used = _run(clipper, [1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 1.0])
    # medians: (1,2,3,4) -> 2.5; (2,3,4,10) -> 3.5; (3,4,10,20) -> 7
    assert used == pytest.approx([0.5, 0.5, 0.5, 0.5, 5.0, 7.0, 14.0])


def test_adaptive_clips_to_threshold():
    clipper = GradClipper(
        ClipConfig(mode="adaptive", adaptive_init=0.5, adaptive_window=2, adaptive_factor=1)
    )
    params = _params([3.0, 4.0])
    clipper.clip(params)
    assert _norm(params) == pytest.approx(0.5, rel=1e-5)


def test_adaptive_ignores_non_finite_norms():
    clipper = GradClipper(
        ClipConfig(mode="adaptive", adaptive_init=0.5, adaptive_window=3, adaptive_factor=2)
    )
    used = _run(clipper, [1.0, float("inf"), 3.0, 1.0])
    assert used == pytest.approx([0.5, 0.5, 0.5, 4.0])


def test_state_dict_round_trip():
    cfg = ClipConfig(mode="adaptive", adaptive_init=0.5, adaptive_window=4, adaptive_factor=2)
    clipper = GradClipper(cfg)
    _run(clipper, [1.0, 2.0, 3.0, 4.0, 10.0])
    state = clipper.state_dict()
    assert state["history"] == [2.0, 3.0, 4.0, 10.0]
    assert all(type(v) is float for v in state["history"])
    restored = GradClipper(cfg)
    restored.load_state_dict(state)
    assert _run(restored, [20.0, 1.0]) == _run(clipper, [20.0, 1.0]) == pytest.approx([7.0, 14.0])


def test_per_layer_grad_norms():
    model = torch.nn.Linear(2, 1)
    model.weight.grad = torch.tensor([[3.0, 4.0]])
    model.bias.grad = torch.tensor([-2.0])
    assert per_layer_grad_norms(model) == pytest.approx({"weight": 5.0, "bias": 2.0})
