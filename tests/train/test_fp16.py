"""fp16 with the dynamic loss scaler, end to end: overflow skips the step and backs off."""

from __future__ import annotations

import torch

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
    assert trainer.guard.skipped_total == 0  # overflow is the scaler's business, not a bad step
