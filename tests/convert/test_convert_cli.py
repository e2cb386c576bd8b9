"""`bittern convert` on the command line: success message, one-line errors, nothing written on failure."""

from __future__ import annotations

import bittern
from bittern.cli import main
from bittern.nn import BitLinear


def test_convert_cli(tmp_path, llama_dir, capsys):
    assert main(["convert", str(llama_dir), "--out", str(tmp_path / "run")]) == 0
    assert "model.quant = ternary" in capsys.readouterr().out
    model, _ = bittern.load(tmp_path / "run")
    assert isinstance(model.layers[0].self_attn.q_proj, BitLinear)
    assert main(["convert", str(llama_dir), "--out", str(tmp_path / "run"), "--quant", "none"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (
        main(["convert", str(llama_dir), "--out", str(tmp_path / "run"), "--quant", "none", "--overwrite"])
        == 0
    )
    model, _ = bittern.load(tmp_path / "run")
    assert type(model.layers[0].self_attn.q_proj).__name__ == "Linear"


def test_convert_cli_error_is_one_line(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bittern: error:") and "\n" not in err
    assert not (tmp_path / "run").exists()
