"""fp16 with the dynamic loss scaler, end to end: overflow skips the step and backs off."""

from __future__ import annotations

import torch

from bittern.monitor import read_metrics
from bittern.train import Trainer


def test_fp16_overflow_backs_off_then_trains(tiny_config, tmp_path):
    cfg = tiny_config(
        train={"precision": "fp16", "steps": 40}, loss_scale={"fp16_init": 2.0**40, "fp16_growth_interval": 3}
    )
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    scale, good, actions = 2.0**40, 0, []
    for _ in range(40):
        before = [p.detach().clone() for p in trainer.model.parameters()]
        outcome = trainer.train_step()
        actions.append(outcome.action)
        if outcome.action == "overflow":  # nothing changes, the scale halves
            assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
            scale, good = scale / 2, 0
        else:
            good += 1
            if good == 3:
                scale, good = scale * 2, 0
        assert trainer.scaler.scale == scale
    assert actions[0] == "overflow" and actions.count("ok") >= 10
    assert trainer.guard.skipped_total == actions.count("overflow")  # skipped steps, all of them
    assert trainer.guard.bad_in_a_row == 0  # though not bad ones: the scaler backs off, no rollback


def test_fp16_overflow_skips_are_logged_as_skipped_steps(tiny_config, tmp_path):
    cfg = tiny_config(train={"precision": "fp16", "steps": 12}, loss_scale={"fp16_init": 2.0**40})
    Trainer(cfg, tmp_path / "run", progress=False).run()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    overflows = [r["step"] for r in records if r.get("alert") == "overflow: fp16 overflow"]
    assert len(overflows) >= 2
    skipped = {r["step"]: r["skipped_steps"] for r in records if "skipped_steps" in r}
    assert skipped[12] == len(overflows)
    assert skipped[overflows[0]] == 1
