"""The stability guard end to end: NaN skip, rollback and recovery, giving up, spikes, plateau."""

from __future__ import annotations

import random

import pytest
import torch

from bittern.cli import main
from bittern.config import GuardConfig
from bittern.errors import TrainingStopped
from bittern.monitor import read_metrics
from bittern.train import Trainer
from bittern.train.guard import OK, ROLLBACK, SKIP, SpikeDetector, StabilityGuard
from bittern.train.signals import EXIT_GAVE_UP
from tests.cli.test_cli import write_config
from tests.conftest import tiny_config_dict


def optimizer_snapshot(trainer: Trainer) -> list[torch.Tensor]:
    state = trainer.optimizer.state_dict()["state"]
    return [v.clone() for s in state.values() for v in s.values()]


def test_nan_step_is_skipped_with_state_untouched(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(guard={"inject_nan_step": 6}), tmp_path / "run", progress=False)
    trainer.run(until=6)  # batches 0..5 done; the next step reads batch 6
    params = [p.detach().clone() for p in trainer.model.parameters()]
    moments = optimizer_snapshot(trainer)
    outcome = trainer.train_step()
    assert outcome.action == SKIP and "non-finite" in outcome.reason
    for before, after in zip(params, trainer.model.parameters(), strict=True):
        assert torch.equal(before, after)
    for before, after in zip(moments, optimizer_snapshot(trainer), strict=True):
        assert torch.equal(before, after)  # exp_avg, exp_avg_sq and AdamW's own step counter
    assert trainer.guard.skipped_total == 1
    assert trainer.train_step().action == OK  # batch 7 is fine again


def test_nan_run_completes_and_logs_the_skip(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(guard={"inject_nan_step": 4}), tmp_path / "run", progress=False)
    result = trainer.run()
    assert result.step == 20 and result.val_loss == result.val_loss  # finite, not NaN
    alerts = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "alert" in r]
    assert any(r["step"] == 5 and "skip" in r["alert"] for r in alerts)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_repeated_nan_rolls_back_and_recovers(tiny_config, tmp_path):
    cfg = tiny_config(guard={"inject_nan_step": 12, "max_bad_steps": 1}, checkpoint={"every": 5})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    result = trainer.run()
    assert result.step == 20
    assert trainer.guard.rollbacks == 1 and trainer.guard.lr_factor == 0.5
    assert trainer.data_offset == 13 - 10  # back at step 10, next batch is the one after the bad one
    alerts = [r["alert"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "alert" in r]
    assert any("rolled back to step 10" in a for a in alerts)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_rollback_marks_the_replayed_steps_superseded(tiny_config, tmp_path):
    from bittern.eval.report import _run_curves
    from bittern.monitor.plot import load_records, metric_series

    cfg = tiny_config(guard={"inject_nan_step": 12, "max_bad_steps": 1}, checkpoint={"every": 5})
    Trainer(cfg, tmp_path / "run", progress=False).run()
    path = tmp_path / "run" / "metrics.jsonl"
    records = read_metrics(path)
    superseded = [r for r in records if r.get("superseded")]
    assert sorted({r["step"] for r in superseded}) == [11, 12, 13]  # kept, marked: what led to the rollback
    assert any("non-finite" in r.get("alert", "") for r in superseded)
    first, replayed = [r["loss"] for r in records if r["step"] == 11 and "loss" in r]
    assert first != replayed  # the replay reads other batches at a lower LR
    for counted in (load_records(path), _run_curves([str(tmp_path / "run")])[str(tmp_path / "run")][0]):
        steps, values = metric_series(counted, "loss")
        assert steps == list(range(1, 21))  # one loss per step: plots and `eval --report` read these
        assert values[10] == replayed
        assert metric_series(counted, "val_loss")[0] == [10, 20]


def test_rollback_lr_factor_applies(tiny_config, tmp_path):
    cfg = tiny_config(
        guard={"inject_nan_step": 12, "max_bad_steps": 1},
        checkpoint={"every": 5},
        schedule={"name": "constant", "warmup_steps": 0},
    )
    Trainer(cfg, tmp_path / "run", progress=False).run()
    lrs = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "lr" in r}
    assert lrs[10] == pytest.approx(3e-3) and lrs[20] == pytest.approx(1.5e-3)


def test_gives_up_after_max_rollbacks(tiny_config, tmp_path, dataset, capsys):
    cfg = tiny_config(guard={"inject_nan_step": 3, "max_bad_steps": 1, "max_rollbacks": 0})
    with pytest.raises(TrainingStopped) as info:
        Trainer(cfg, tmp_path / "run", progress=False).run()
    assert info.value.exit_code == EXIT_GAVE_UP
    config = write_config(
        tmp_path / "c.toml",
        tiny_config_dict(dataset, guard={"inject_nan_step": 3, "max_bad_steps": 1, "max_rollbacks": 0}),
    )
    assert main(["train", "--config", config, "--out", str(tmp_path / "cli"), "--quiet"]) == EXIT_GAVE_UP
    assert "gave up" in capsys.readouterr().err


def test_spike_detector_fires_on_spike_not_on_noise():
    rng = random.Random(0)
    detector = SpikeDetector(window=50, zscore=6.0)
    fired = []
    for i in range(2000):
        loss = 3.0 - i * 1e-4 + rng.gauss(0, 0.05) + (1.0 if i == 1500 else 0.0)
        if detector.is_spike(loss):
            fired.append(i)
        else:
            detector.accept(loss)
    assert fired == [1500]


def test_spike_actions():
    for action, expected in (("warn", OK), ("skip", SKIP), ("rollback", ROLLBACK)):
        guard = StabilityGuard(GuardConfig(spike_action=action, max_bad_steps=5))
        for i in range(20):
            assert guard.judge(2.0 + 0.01 * (i % 3), True).action == OK
        verdict = guard.judge(9.0, True)
        assert verdict.action == expected and "spike" in verdict.reason
        assert guard.spikes_total == 1


def test_plateau_switches_to_progressive(tiny_config, tmp_path):
    cfg = tiny_config(
        optim={"lr": 1e-12},
        train={"steps": 16, "eval_every": 2},
        guard={"plateau_patience": 2},
        progressive={"warmup_steps": 100},
    )
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.run()
    assert trainer.progressive_start > 0 and trainer.progressive_mode == "linear"
    lambdas = {
        r["step"]: r["quant_lambda"]
        for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
        if "quant_lambda" in r
    }
    start = trainer.progressive_start
    assert lambdas[start] == 1.0
    assert lambdas[start + 1] == pytest.approx(0.0)
    assert lambdas[16] == pytest.approx((15 - start) / 100)


def test_grad_norm_alert(tiny_config, tmp_path, capsys):
    Trainer(
        tiny_config(guard={"alert_grad_norm": 1e-6}, train={"steps": 3}), tmp_path / "r", progress=False
    ).run()
    alerts = [r for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if "alert" in r]
    assert [r["step"] for r in alerts] == [1, 2, 3]
    assert "ALERT" in capsys.readouterr().err
