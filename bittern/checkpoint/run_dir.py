"""The run folder: config.toml, tokenizer/, metrics.jsonl, tensorboard/, checkpoints/."""

from __future__ import annotations

import shutil
from pathlib import Path

from bittern.errors import BitternError

RUN_MARKERS = ("config.toml", "metrics.jsonl", "checkpoints")


def holds_run(path: Path) -> bool:
    return any((Path(path) / m).exists() for m in RUN_MARKERS)


def prepare_run_dir(path: Path, resume: bool, overwrite: bool) -> bool:
    """Make `path` ready for a run; return True when an existing run is to be resumed.

    Refuses to touch a folder that holds a run unless resume or overwrite is given, and
    never deletes a folder that does not look like a bittern run.
    """
    path = Path(path)
    if resume and overwrite:
        raise BitternError("--resume and --overwrite exclude each other")
    if path.exists() and not path.is_dir():
        raise BitternError(f"output path {path} exists and is not a folder")
    if path.exists() and any(path.iterdir()):
        if not holds_run(path):
            raise BitternError(f"output folder {path} is not empty and holds no bittern run; choose another")
        if resume:
            return True
        if not overwrite:
            raise BitternError(f"output folder {path} already holds a run; pass --resume or --overwrite")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return False
