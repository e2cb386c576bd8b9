"""Staged outputs: renamed into place only on success, with the permissions the umask gives."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from bittern.export.common import staged_file, staged_output


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_exported_folder_and_file_follow_the_umask(umask, tmp_path):
    with staged_output(tmp_path / "folder") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))  # safetensors writes 0o600
        (tmp / "tokenizer").mkdir()
        (tmp / "tokenizer" / "meta.json").write_text("{}")
    with staged_file(tmp_path / "model.gguf") as tmp:
        private = tmp.with_name("private")
        private.write_bytes(b"x")
        private.chmod(0o600)
        private.replace(tmp)  # a writer that replaces the file it was given
    assert _mode(tmp_path / "folder") == 0o777 & ~umask  # mkdtemp made it 0o700
    assert _mode(tmp_path / "folder" / "tokenizer") == 0o777 & ~umask
    for name in ("model.safetensors", "tokenizer/meta.json"):
        assert _mode(tmp_path / "folder" / name) == 0o666 & ~umask, name
    assert _mode(tmp_path / "model.gguf") == 0o666 & ~umask  # mkstemp made it 0o600


def test_a_failed_export_leaves_nothing(tmp_path):
    for stage, out in ((staged_output, tmp_path / "folder"), (staged_file, tmp_path / "model.gguf")):
        with pytest.raises(RuntimeError), stage(out):
            raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []
