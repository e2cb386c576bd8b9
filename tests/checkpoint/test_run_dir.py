"""The run folder: checking it touches nothing; an old run goes only under overwrite."""

from __future__ import annotations

import pytest

from bittern.checkpoint import check_run_dir, prepare_run_dir
from bittern.errors import BitternError


@pytest.fixture
def old_run(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.toml").write_text("[train]\n")
    return run


def test_check_touches_nothing(tmp_path, old_run):
    fresh = tmp_path / "fresh" / "run"
    assert check_run_dir(fresh, resume=False, overwrite=False) is False
    assert not fresh.parent.exists()
    assert check_run_dir(old_run, resume=False, overwrite=True) is False
    assert check_run_dir(old_run, resume=True, overwrite=False) is True
    assert (old_run / "config.toml").read_text() == "[train]\n"
    with pytest.raises(BitternError, match="already holds a run"):
        check_run_dir(old_run, resume=False, overwrite=False)
    with pytest.raises(BitternError, match="exclude each other"):
        check_run_dir(old_run, resume=True, overwrite=True)


def test_prepare_deletes_only_an_old_run_under_overwrite(tmp_path, old_run):
    assert prepare_run_dir(old_run, resume=True, overwrite=False) is True
    assert (old_run / "config.toml").exists()
    assert prepare_run_dir(old_run, resume=False, overwrite=True) is False
    assert old_run.is_dir() and not any(old_run.iterdir())
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    with pytest.raises(BitternError, match="holds no bittern run"):
        prepare_run_dir(stranger, resume=False, overwrite=True)
    assert (stranger / "notes.txt").read_text() == "keep me"
    fresh = tmp_path / "a" / "b"
    assert prepare_run_dir(fresh, resume=True, overwrite=False) is False
    assert fresh.is_dir()
