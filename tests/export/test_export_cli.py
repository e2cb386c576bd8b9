"""`bittern export`: each format from the command line; user errors are one line and exit 2."""

from __future__ import annotations

import pytest

from bittern.cli import main
from tests.export.conftest import BUILTIN


@pytest.mark.parametrize(
    ("run_name", "args", "out"),
    [
        ("llama", ["--format", "packed"], "p"),
        ("llama", ["--format", "packed-base3"], "p3"),
        ("bitnet", ["--format", "hf"], "hf"),
        ("gguf", ["--format", "gguf", "--gguf-type", "TQ1_0"], "m.gguf"),
        (BUILTIN, ["--format", "hf"], "hf"),
        (BUILTIN, ["--format", "gguf"], "m.gguf"),
    ],
)
def test_export_formats(trained_run, tmp_path, capsys, run_name, args, out):
    assert main(["export", str(trained_run(run_name)), *args, "--out", str(tmp_path / out)]) == 0
    assert "bits/parameter" in capsys.readouterr().out
    assert (tmp_path / out).exists()


def test_errors_are_one_line(trained_run, tmp_path, capsys):
    rc = main(["export", str(trained_run("llama")), "--format", "gguf", "--out", str(tmp_path / "m.gguf")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("bittern: error: gguf export: llama.cpp's bitnet graph cannot")
    assert "--model.norm_placement=sublayer --model.tie_embeddings=true" in err
    assert err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
