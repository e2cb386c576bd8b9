"""The run folder: config.toml, tokenizer/, metrics.jsonl, tensorboard/, checkpoints/."""

from __future__ import annotations

import shutil
from pathlib import Path

from bittern.errors import BitternError

RUN_MARKERS = ("config.toml", "metrics.jsonl", "checkpoints")


def holds_run(path: Path) -> bool:
    return any((Path(path) / m).exists() for m in RUN_MARKERS)


def check_run_dir(path: Path, resume: bool, overwrite: bool) -> bool:
    """Whether `path` holds a run to resume; raise if a run may not use it. Touches nothing.

    Refuses a folder that holds a run unless resume or overwrite is given, and a non-empty
    folder that does not look like a bittern run in any case.
    """
    path = Path(path)
    if resume and overwrite:
        raise BitternError("--resume and --overwrite exclude each other")
    if path.exists() and not path.is_dir():
        raise BitternError(f"output path {path} exists and is not a folder")
    if not (path.exists() and any(path.iterdir())):
        return False
    if not holds_run(path):
        raise BitternError(f"output folder {path} is not empty and holds no bittern run; choose another")
    if not (resume or overwrite):
        raise BitternError(f"output folder {path} already holds a run; pass --resume or --overwrite")
    return resume


def prepare_run_dir(path: Path, resume: bool, overwrite: bool) -> bool:
    """Check `path` as check_run_dir does, then make it ready; return True when resuming.

    The old run goes only under `overwrite`, so call this once every other check has passed.
    """
    path = Path(path)
    if check_run_dir(path, resume, overwrite):
        return True
    if overwrite and path.is_dir() and any(path.iterdir()):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return False
