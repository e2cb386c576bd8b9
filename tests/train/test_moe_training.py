"""Training a mixture of experts: exact resume, compiled blocks, router metrics and the dead-expert alert."""

from __future__ import annotations

import pytest
import torch

from bittern.monitor import read_metrics
from bittern.train import Trainer, train

MOE = {"moe_experts": 4, "moe_top_k": 2, "moe_ffn_dim": 32}


def losses(run):
    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}


@pytest.mark.parametrize("balance", ["aux_loss", "bias"])
def test_moe_resume_is_exact(balance, tiny_config, tmp_path):
    sections = dict(
        model=MOE | {"moe_balance": balance, "moe_bias_rate": 0.01},
        train={"steps": 8, "eval_every": 0},
        checkpoint={"every": 0},
    )
    train(tiny_config(**sections), tmp_path / "straight", progress=False)
    Trainer(tiny_config(**sections), tmp_path / "split", progress=False).run(until=4)
    resumed = Trainer(tiny_config(**sections), tmp_path / "split", resume=True, progress=False)
    assert resumed.resumed_from.name == "step_00000004"
    if balance == "bias":  # the routing biases moved and came back from the checkpoint
        assert resumed.model.layers[0].mlp.expert_bias.abs().sum() > 0
    resumed.run()
    straight = losses(tmp_path / "straight")
    assert losses(tmp_path / "split") == straight and len(straight) == 8


def test_moe_metrics_and_every_experts_health_are_logged(tiny_config, tmp_path):
    train(tiny_config(model=MOE, train={"steps": 3, "eval_every": 0}), tmp_path / "run", progress=False)
    last = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r][-1]
    loads = [last[f"moe/layers.0/load/{e}"] for e in range(4)]
    assert sum(loads) == pytest.approx(1.0)
    assert 0 < last["moe/layers.1/entropy"] <= torch.log(torch.tensor(4.0)).item() + 1e-6
    assert last["moe/balance_loss"] >= 1.0 - 1e-6  # E * sum f P is at least 1 ... up to rounding
    assert last["moe/z_loss"] > 0
    for e in range(4):
        assert f"health/layers.1.mlp.experts.{e}.down_proj/zero_frac" in last


def test_dead_expert_alert(tiny_config, tmp_path):
    # a router whose weights are zero and a bias toward experts 0 and 1: experts 2 and 3 never get a token
    cfg = tiny_config(model=MOE, train={"steps": 3, "eval_every": 0}, log={"moe_dead_after": 2})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    for _, m in trainer.moe.layers:
        m.balance = "bias"
        m.bias_rate = 0.0
        m.expert_bias.copy_(torch.tensor([10.0, 10.0, 0.0, 0.0]))
    trainer.run()
    alerts = [r["alert"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "alert" in r]
    assert "dead expert: layers.0.mlp.experts.2 got no tokens for 2 steps" in alerts
    assert not any("experts.0 " in a for a in alerts)
    trainer.close()


def test_moe_compiled_blocks_train_like_eager(tiny_config, tmp_path):
    sections = dict(model=MOE, train={"steps": 3, "eval_every": 0})
    train(tiny_config(**sections), tmp_path / "eager", progress=False)
    sections["train"] = sections["train"] | {"compile": True, "compile_backend": "aot_eager"}
    train(tiny_config(**sections), tmp_path / "compiled", progress=False)
    a, b = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert a.keys() == b.keys()
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step


def test_moe_resume_is_exact_on_the_fused_kernels(cpu_kernels, tiny_config, tmp_path, monkeypatch):
    """The same, every BitLinear and the grouped experts on the Triton kernels (their kept codes)."""
    import dataclasses

    import bittern.train.trainer as trainer

    made = trainer.KernelOptions

    def options(*args, **kwargs):
        return dataclasses.replace(made(*args, **kwargs), devices=cpu_kernels.devices)

    monkeypatch.setattr(trainer, "KernelOptions", options)
    sections = dict(model=MOE, train={"steps": 4, "eval_every": 0}, checkpoint={"every": 0})
    train(tiny_config(**sections), tmp_path / "straight", progress=False)
    Trainer(tiny_config(**sections), tmp_path / "split", progress=False).run(until=2)
    resumed = Trainer(tiny_config(**sections), tmp_path / "split", resume=True, progress=False)
    assert resumed.model.layers[0].mlp.expert_codes["down"].codes is None  # nothing kept before a forward
    resumed.run()
    assert resumed.model.layers[0].mlp.expert_codes["down"].codes is not None  # the kept-codes path ran
    straight = losses(tmp_path / "straight")
    assert losses(tmp_path / "split") == straight and len(straight) == 4
