"""Checkpoint files get the permissions the umask gives, like any file the user writes."""

from __future__ import annotations

import os
import stat

import pytest
from torch import nn

from bittern.checkpoint.store import save_checkpoint, verify_checkpoint


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoint_files_follow_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        ckpt = save_checkpoint(tmp_path / "run", 3, nn.Linear(4, 2), {"step": 3}, "[train]\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o777 & ~umask
    files = [p for p in ckpt.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"model.safetensors", "train_state.pt", "COMMITTED"}
    for p in files:  # safetensors wrote model.safetensors 0o600
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p.name
    verify_checkpoint(ckpt)
