"""The install users take first: `pip install torch==2.13.0` then `pip install .`, no extras, no Triton.

A fresh venv gets the package from this checkout without its extras, then trains a tiny run on
the CPU, evaluates it, samples from it and exports it, each through the installed `bittern`
command. It is marked `install` and runs by default, so `make test` (what CI runs) runs it; it
takes a minute or two, most of it pip. Skip it locally with `-m "not install"`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bittern.config import to_toml

REPO = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # as the Makefile pins it: the CPU build, from local disk


def _run(cmd: list, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRITON_", "PYTHON"))}
    env["OMP_NUM_THREADS"] = "1"  # a tiny model trains fastest on one thread
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{cmd} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def _source_copy(dest: Path) -> Path:
    """What a checkout holds for the build, copied: pip builds in the source folder (build/, egg-info)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "bittern", dest / "bittern", ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.mark.install
def test_plain_install_trains_evaluates_generates_and_exports(tiny_config, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp_path)
    bin_ = venv / "bin"
    pip = [bin_ / "python", "-m", "pip", "install", "-q", "--no-compile"]
    _run([*pip, TORCH], tmp_path)
    _run([*pip, _source_copy(tmp_path / "src")], tmp_path)
    probe = "import importlib.util as u; print(u.find_spec('triton') is None, u.find_spec('bittern').origin)"
    absent, origin = _run([bin_ / "python", "-c", probe], tmp_path).stdout.split()
    assert absent == "True"  # the CPU torch does not bring Triton along, nor does bittern
    assert Path(origin).is_relative_to(venv)  # the installed copy, not this checkout

    config = tmp_path / "tiny.toml"
    config.write_text(to_toml(tiny_config(train={"steps": 3, "eval_every": 3}, checkpoint={"every": 3})))
    run = tmp_path / "run"
    bittern = bin_ / "bittern"
    _run([bittern, "train", "--config", config, "--out", run, "--quiet"], tmp_path)
    assert (run / "checkpoints" / "step_00000003" / "COMMITTED").is_file()
    _run([bittern, "eval", run], tmp_path)
    _run([bittern, "generate", run, "--prompt", "ROMEO.", "--max-new-tokens", "8"], tmp_path)
    _run([bittern, "export", run, "--format", "packed", "--out", tmp_path / "packed"], tmp_path)
    assert any((tmp_path / "packed").iterdir())
