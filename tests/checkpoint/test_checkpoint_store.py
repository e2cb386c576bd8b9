"""What killed saves leave behind is removed on the next start; a save still in flight is not."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from torch import nn

from bittern.checkpoint import list_checkpoints, remove_stale_saves, save_checkpoint, verify_checkpoint
from bittern.checkpoint.store import COMMITTED, OWNER, fresh_tmp_dir


def leftover(root, name: str, owner: str | None):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"half a checkpoint")
    if owner is not None:
        (folder / OWNER).write_text(owner)
    return folder


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def test_a_committed_checkpoint_keeps_no_owner(tmp_path):
    final = save_checkpoint(tmp_path, 3, nn.Linear(2, 2), {"step": 3}, "")
    assert not (final / OWNER).exists()
    assert OWNER not in json.loads((final / "manifest.json").read_text())["sha256"]
    verify_checkpoint(final)


def test_a_save_in_flight_names_its_process(tmp_path):
    tmp = fresh_tmp_dir(tmp_path / "checkpoints" / "step_00000007", suffix="x")
    assert (tmp / OWNER).read_text().split() == [socket.gethostname(), str(os.getpid())]


@pytest.mark.skipif(sys.platform == "win32", reason="process liveness is not checked on Windows")
def test_only_the_leftovers_of_dead_saves_are_removed(tmp_path, live_pid):
    host = socket.gethostname()
    kept = save_checkpoint(tmp_path, 10, nn.Linear(2, 2), {"step": 10}, "")
    root = tmp_path / "checkpoints"
    dead = [
        leftover(root, ".tmp-step_00000020-4242", f"{host} {dead_pid()}"),  # killed (kill -9) mid-save
        leftover(root, ".tmp-step_00000030-dcp", None),  # killed before it named its owner
        leftover(root, "step_00000040", f"{host} {dead_pid()}"),  # renamed, killed before COMMITTED
        leftover(root, "step_00000050", None),  # pruning killed after uncommitting
        leftover(root, ".tmp-step_00000060-1", f"{host} {os.getpid()}"),  # this process is not saving now
        leftover(root, ".tmp-step_00000070-1", f"another-{host} {live_pid}"),  # another host's old save
    ]
    live = leftover(root, ".tmp-step_00000080-dcp", f"{host} {live_pid}")  # another run's save in flight
    assert remove_stale_saves(tmp_path) == sorted(dead)
    assert sorted(root.iterdir()) == [live, kept]
    assert list_checkpoints(tmp_path) == [kept] and (kept / COMMITTED).exists()
    assert remove_stale_saves(tmp_path) == []
    assert remove_stale_saves(tmp_path / "no-run") == []
