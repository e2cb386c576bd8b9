"""Checkpoints (atomic, verified) and run folders."""

from bittern.checkpoint.run_dir import check_run_dir, holds_run, prepare_run_dir
from bittern.checkpoint.store import (
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    load_train_state,
    load_weights,
    prune_checkpoints,
    remove_stale_saves,
    save_checkpoint,
    verify_checkpoint,
)

__all__ = [
    "check_run_dir",
    "checkpoint_dir",
    "holds_run",
    "latest_checkpoint",
    "list_checkpoints",
    "load_train_state",
    "load_weights",
    "prepare_run_dir",
    "prune_checkpoints",
    "remove_stale_saves",
    "save_checkpoint",
    "verify_checkpoint",
]
