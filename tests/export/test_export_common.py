"""Staged outputs: renamed into place only on success, with the permissions the umask gives."""

from __future__ import annotations

import os
import stat

import pytest

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
        (tmp / "weights.bin").write_bytes(b"x")
    with staged_file(tmp_path / "model.gguf") as tmp:
        tmp.write_bytes(b"x")
    assert _mode(tmp_path / "folder") == 0o777 & ~umask  # mkdtemp made it 0o700
    assert _mode(tmp_path / "folder" / "weights.bin") == 0o666 & ~umask
    assert _mode(tmp_path / "model.gguf") == 0o666 & ~umask  # mkstemp made it 0o600


def test_a_failed_export_leaves_nothing(tmp_path):
    for stage, out in ((staged_output, tmp_path / "folder"), (staged_file, tmp_path / "model.gguf")):
        with pytest.raises(RuntimeError), stage(out):
            raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []
