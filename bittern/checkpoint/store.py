"""Atomic checkpoints: write to a temporary folder, fsync, rename, then a commit marker.

A checkpoint folder `checkpoints/step_XXXXXXXX/` holds model.safetensors (latent weights),
train_state.pt (optimizer, step, RNG, ...), config.toml and manifest.json (SHA-256 of every
file). It counts only once COMMITTED exists; load verifies the manifest. While a save is in
flight its folder holds OWNER ("host pid" of the writing process), so the next start can tell
the leftovers of a killed save (`remove_stale_saves`) from a save still being written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from bittern.errors import BitternError

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
CONFIG_FILE = "config.toml"
MANIFEST = "manifest.json"
COMMITTED = "COMMITTED"
OWNER = "OWNER"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def save_checkpoint(
    run_dir: Path, step: int, model: nn.Module, train_state: dict[str, Any], config_toml: str
) -> Path:
    """Write checkpoint `step` (single process) atomically and return its folder."""
    final = checkpoint_dir(run_dir, step)
    tmp = fresh_tmp_dir(final, suffix=str(os.getpid()))
    save_model(model, str(tmp / MODEL_FILE))
    torch.save(train_state, tmp / STATE_FILE)
    (tmp / CONFIG_FILE).write_text(config_toml)
    return commit(tmp, final, step)


def fresh_tmp_dir(final: Path, suffix: str) -> Path:
    """An empty temporary sibling of `final` (a leftover of a crashed save is cleared)."""
    tmp = final.parent / f".tmp-{final.name}-{suffix}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / OWNER).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    return tmp


def follow_umask(folder: Path) -> None:
    """Give every file under `folder` the mode the umask gives a new file.

    safetensors writes its files private (0600). `folder` was made by mkdir, so its own mode
    shows the umask, which os.umask could only read by setting it for the whole process.
    """
    mode = stat.S_IMODE(folder.stat().st_mode) & 0o666
    for p in folder.rglob("*"):
        if p.is_file():
            p.chmod(mode)


def commit(tmp: Path, final: Path, step: int) -> Path:
    """Manifest every file of `tmp`, fsync, rename to `final`, then write the commit marker."""
    follow_umask(tmp)
    files = sorted(p for p in tmp.rglob("*") if p.is_file() and p != tmp / OWNER)
    digests = {str(p.relative_to(tmp)): sha256_file(p) for p in files}
    manifest = {"format_version": FORMAT_VERSION, "step": step, "sha256": digests}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for p in [*files, tmp / MANIFEST]:
        _fsync(p)
    for d in {p.parent for p in files} | {tmp}:
        _fsync(d)
    if final.exists():  # an uncommitted leftover of a crashed save of the same step
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync(final.parent)
    marker = final / COMMITTED
    marker.write_text(f"{step}\n")
    _fsync(marker)
    (final / OWNER).unlink(missing_ok=True)
    _fsync(final)
    return final


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host. Not checked on Windows (os.kill would end it):
    there a run folder's leftovers are removed as on another host's."""
    if sys.platform == "win32":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _save_in_flight(folder: Path) -> bool:
    """True when `folder`'s OWNER is another live process on this host (its save is not done)."""
    try:
        host, pid = (folder / OWNER).read_text().split()
        pid = int(pid)
    except (OSError, ValueError):
        return False  # no owner: a save killed before writing it, or a half-pruned checkpoint
    return host == socket.gethostname() and pid != os.getpid() and _pid_alive(pid)


def remove_stale_saves(run_dir: Path) -> list[Path]:
    """Delete what dead saves left in `run_dir/checkpoints`: temporary folders and uncommitted
    step folders whose writer is not a live process. Called by one process at the start of a run
    (before it saves anything); returns what it removed."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    stale = [
        p
        for p in sorted(root.iterdir())
        if p.is_dir()
        and (p.name.startswith(".tmp-step_") or (p.name.startswith("step_") and not (p / COMMITTED).exists()))
        and not _save_in_flight(p)
    ]
    for p in stale:
        shutil.rmtree(p)
    return stale


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Committed checkpoint folders, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if (p / COMMITTED).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check the commit marker and every file's SHA-256; return the manifest."""
    path = Path(path)
    if not (path / COMMITTED).is_file():
        raise BitternError(f"checkpoint {path} is incomplete (no {COMMITTED} marker)")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        expected = manifest["sha256"]
    except (OSError, ValueError, KeyError) as e:
        raise BitternError(f"checkpoint manifest {path / MANIFEST} is unreadable: {e}") from None
    for name, digest in expected.items():
        f = path / name
        if not f.is_file():
            raise BitternError(f"checkpoint file missing: {f}")
        if sha256_file(f) != digest:
            raise BitternError(f"checkpoint file corrupt (SHA-256 mismatch): {f}")
    return manifest


def load_weights(path: Path, model: nn.Module) -> None:
    """Load model.safetensors of a verified checkpoint into `model` (strict)."""
    try:
        missing, unexpected = load_model(model, str(Path(path) / MODEL_FILE), strict=False)
    except Exception as e:  # safetensors raises several types for malformed files
        raise BitternError(f"cannot load weights {Path(path) / MODEL_FILE}: {e}") from None
    if missing or unexpected:
        raise BitternError(
            f"checkpoint {path} does not fit the model: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )


def load_train_state(path: Path) -> dict[str, Any]:
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)


def prune_checkpoints(run_dir: Path, keep_last: int, protect: Path | None = None) -> None:
    """Delete all but the newest `keep_last` committed checkpoints, never `protect`."""
    if keep_last <= 0:
        return
    found = list_checkpoints(run_dir)
    for old in found[:-keep_last]:
        if protect is not None and old.resolve() == Path(protect).resolve():
            continue
        (old / COMMITTED).unlink()  # uncommit first: a crash mid-delete leaves no valid-looking half
        shutil.rmtree(old)
