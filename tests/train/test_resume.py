"""Runs are never lost: exact resume, kill -9 mid-checkpoint, SIGTERM, corrupt checkpoints, retention."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bittern.checkpoint import latest_checkpoint, list_checkpoints
from bittern.cli import EXIT_ERROR, main
from bittern.config import load_config
from bittern.errors import BitternError
from bittern.monitor import read_metrics
from bittern.train import Trainer, train
from bittern.train.rng import seed_everything
from bittern.train.signals import EXIT_PREEMPTED
from tests.cli.test_cli import write_config
from tests.conftest import tiny_config_dict

ROOT = Path(__file__).resolve().parents[2]
STATEFUL = {  # every piece of state a checkpoint must carry
    "clip": {"mode": "adaptive", "adaptive_window": 6},
    "loss_scale": {"alpha": True, "alpha_threshold": 2.0},
    "progressive": {"schedule": "stepped", "start_frac": 0.1, "interval": 4, "delta": 0.25},
    "guard": {"spike_window": 8},
    "checkpoint": {"every": 0},
}

# Runs a config in a child process; "kill9" dies (SIGKILL) inside the save of step 20,
# "sigterm" sends itself SIGTERM during step 7.
CHILD = """
import os, signal, sys
import bittern.checkpoint.store as store
from bittern.cli import main
from bittern.train.trainer import Trainer
config, out, mode = sys.argv[1:4]
if mode == "kill9":
    real = store.torch.save
    def dying_save(obj, path):
        real(obj, path)
        if obj["step"] == 20:
            os.kill(os.getpid(), signal.SIGKILL)
    store.torch.save = dying_save
if mode == "sigterm":
    real_step = Trainer.train_step
    def step(self, *a, **k):
        if self.step == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, *a, **k)
    Trainer.train_step = step
sys.exit(main(["train", "--config", config, "--out", out, "--resume", "--quiet"]))
"""


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}


def child(config: str, out: Path, mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", CHILD, config, str(out), mode],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_two_runs_are_identical(tiny_config, tmp_path):
    train(tiny_config(**STATEFUL), tmp_path / "a", progress=False)
    train(tiny_config(**STATEFUL), tmp_path / "b", progress=False)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_resume_with_every_piece_of_state_is_exact(tiny_config, tmp_path):
    train(tiny_config(**STATEFUL), tmp_path / "straight", progress=False)
    Trainer(tiny_config(**STATEFUL), tmp_path / "split", progress=False).run(until=9)
    resumed = Trainer(tiny_config(**STATEFUL), tmp_path / "split", resume=True, progress=False)
    assert resumed.resumed_from.name == "step_00000009"
    resumed.run()
    straight = losses(tmp_path / "straight")
    assert losses(tmp_path / "split") == straight and len(straight) == 20


def test_kill9_during_checkpoint_write(dataset, tmp_path):
    config = write_config(tmp_path / "c.toml", tiny_config_dict(dataset, train={"steps": 30}))
    run = tmp_path / "run"
    proc = child(config, run, "kill9")
    assert proc.returncode == -9, proc.stderr
    assert [p.name for p in list_checkpoints(run)] == ["step_00000010"]  # the partial one is ignored
    assert any(p.name.startswith(".tmp-step_00000020") for p in (run / "checkpoints").iterdir())
    rerun = child(config, run, "plain")
    assert rerun.returncode == 0  # the same command auto-resumes from step 10
    assert "removed .tmp-step_00000020" in rerun.stderr
    assert not [p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith("step_")]
    straight = tmp_path / "straight"
    assert child(config, straight, "plain").returncode == 0
    assert losses(run) == losses(straight)


def test_sigterm_checkpoints_and_exits(dataset, tmp_path):
    config = write_config(tmp_path / "c.toml", tiny_config_dict(dataset, checkpoint={"every": 0}))
    run = tmp_path / "run"
    proc = child(config, run, "sigterm")
    assert proc.returncode == EXIT_PREEMPTED, proc.stderr
    assert "stopped by signal" in proc.stderr
    assert latest_checkpoint(run).name == "step_00000007"
    assert child(config, run, "plain").returncode == 0
    straight = tmp_path / "straight"
    assert child(config, straight, "plain").returncode == 0
    assert losses(run) == losses(straight)


def test_corrupt_newest_needs_explicit_fallback(tiny_config, tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_config(checkpoint={"every": 5}), run, progress=False).run(until=10)
    newest = latest_checkpoint(run) / "train_state.pt"
    blob = bytearray(newest.read_bytes())
    blob[-10] ^= 0x01
    newest.write_bytes(bytes(blob))
    with pytest.raises(BitternError, match="train_state.pt"):
        Trainer(tiny_config(), run, resume=True)
    trainer = Trainer(
        tiny_config(checkpoint={"every": 5, "fallback": True}), run, resume=True, progress=False
    )
    assert trainer.step == 5


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fallback_with_no_valid_checkpoint_is_an_error_and_changes_nothing(dataset, tmp_path, capsys):
    config = write_config(tmp_path / "c.toml", tiny_config_dict(dataset, checkpoint={"every": 5}))
    run = tmp_path / "run"
    Trainer(load_config(config), run, progress=False).run(until=10)
    for ckpt in list_checkpoints(run):
        (ckpt / "train_state.pt").write_bytes(b"corrupt")
    before = snapshot(run)
    argv = ["train", "--config", config, "--out", str(run), "--resume", "--fallback", "--quiet"]
    assert main(argv) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bittern: error: no checkpoint") and "--overwrite" in err[-1]
    assert snapshot(run) == before  # metrics, config and the corrupt checkpoints as they were


def test_resume_without_a_checkpoint_starts_over_without_duplicate_records(tiny_config, tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_config(checkpoint={"every": 0}), run, progress=False).run(until=6)
    shutil.rmtree(run / "checkpoints")  # killed before its first checkpoint was committed
    train(tiny_config(), run, resume=True, progress=False)
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 21))


def test_every_rng_resumes_where_it_stopped(tiny_config, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(checkpoint={"every": 0}), run, progress=False)
    trainer.run(until=5)
    np.random.random(7), random.random(), torch.rand(3)  # anything drawn during the run so far
    trainer.save()
    expected = np.random.random(4), np.random.standard_normal(), random.random(), torch.rand(3)
    seed_everything(123)
    Trainer(tiny_config(), run, resume=True, progress=False)
    resumed = np.random.random(4), np.random.standard_normal(), random.random(), torch.rand(3)
    assert (resumed[0] == expected[0]).all() and resumed[1:3] == expected[1:3]
    assert torch.equal(resumed[3], expected[3])


def test_retention_never_deletes_the_resumed_checkpoint(tiny_config, tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_config(checkpoint={"every": 0}), run, progress=False).run(until=10)
    train(tiny_config(checkpoint={"every": 2, "keep_last": 1}), run, resume=True, progress=False)
    assert [p.name for p in list_checkpoints(run)] == ["step_00000010", "step_00000020"]
