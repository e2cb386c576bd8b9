"""The command line: every user error is one line on stderr and exit status 2; the jobs run."""

from __future__ import annotations

import json
import shutil

import pytest

from bittern.cli import EXIT_ERROR, main
from tests.conftest import tiny_config_dict


def write_config(path, data: dict) -> str:
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def run_error(capsys, argv: list[str]) -> str:
    assert main(argv) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bittern: error: "), err
    return err[0]


@pytest.fixture
def config_file(tmp_path, dataset):
    return write_config(tmp_path / "tiny.toml", tiny_config_dict(dataset, train={"steps": 4}))


def test_missing_config(capsys, tmp_path):
    assert "nope.toml" in run_error(capsys, ["train", "--config", str(tmp_path / "nope.toml")])


def test_malformed_config(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 3\n")
    assert "malformed config" in run_error(capsys, ["train", "--config", str(bad)])


def test_unknown_keys_named(capsys, config_file, tmp_path):
    msg = run_error(
        capsys, ["train", "--config", config_file, "--out", str(tmp_path / "r"), "--train.stepz=3"]
    )
    assert "train.stepz" in msg
    msg = run_error(capsys, ["train", "--config", config_file, "--modle.quant=none"])
    assert "modle" in msg
    assert not (tmp_path / "r").exists()


def test_bad_value_named(capsys, config_file):
    assert "model.quant" in run_error(capsys, ["train", "--config", config_file, "--model.quant=binary"])
    assert "train.steps" in run_error(capsys, ["train", "--config", config_file, "--train.steps=many"])
    msg = run_error(capsys, ["train", "--config", config_file, "--kernels.int8_mm=auto"])
    assert msg == "bittern: error: kernels.int8_mm must be 'tma' or 'pointer', got 'auto'"


def test_missing_data_path(capsys, config_file, tmp_path):
    msg = run_error(capsys, ["train", "--config", config_file, "--data.path", str(tmp_path / "nodata")])
    assert "nodata" in msg


def test_train_eval_generate(capsys, config_file, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--config", config_file, "--out", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "unigram baseline" in out
    assert main(["eval", str(run)]) == 0
    row = capsys.readouterr().out
    assert "bits/byte" in row and str(run) in row
    assert main(["generate", str(run), "--prompt", "ROMEO.", "--max-new-tokens", "20"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("ROMEO.") and len(text.rstrip("\n")) > len("ROMEO.")
    msg = run_error(capsys, ["train", "--config", config_file, "--out", str(run)])
    assert "already holds a run" in msg


def test_data_prepare_and_tokenizer_mismatch(capsys, corpus_folder, tmp_path, dataset):
    out = tmp_path / "bpe"
    argv = [
        "data",
        "prepare",
        str(corpus_folder),
        "--out",
        str(out),
        "--tokenizer",
        "bpe",
        "--vocab-size",
        "300",
        "--quiet",
    ]
    assert main(argv) == 0
    assert (out / "meta.json").is_file()
    assert str(out) in run_error(capsys, argv)  # an existing dataset is never overwritten
    cfg = write_config(tmp_path / "c.toml", tiny_config_dict(out, data={"tokenizer": "byte"}))
    assert "tokenizer mismatch" in run_error(capsys, ["train", "--config", cfg, "--out", str(tmp_path / "r")])
    byte_run = tmp_path / "byte_run"
    cfg = write_config(tmp_path / "b.toml", tiny_config_dict(dataset, train={"steps": 2}))
    assert main(["train", "--config", cfg, "--out", str(byte_run), "--quiet"]) == 0
    assert "tokenizer mismatch" in run_error(capsys, ["eval", str(byte_run), "--data", str(out)])


def test_eval_missing_run(capsys, tmp_path):
    assert "no such run" in run_error(capsys, ["eval", str(tmp_path / "ghost")])


def test_plot_writes_pngs(capsys, config_file, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--config", config_file, "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["plot", str(run)]) == 0
    written = capsys.readouterr().out.split()
    names = {p.rsplit("/", 1)[-1] for p in written}
    assert {"loss.png", "lr.png", "grad_norm.png", "zero_frac.png"} <= names
    assert all((run / "plots" / n).stat().st_size > 1000 for n in names)
    assert "metrics.jsonl" in run_error(capsys, ["plot", str(tmp_path)])


@pytest.mark.parametrize(
    "bad",
    [
        ["--max-new-tokens", "-3"],
        ["--temperature", "-1"],
        ["--temperature", "nan"],
        ["--top-k", "-5"],
        ["--num-samples", "0"],
        ["--seed", "-1"],
    ],
)
def test_generate_refuses_unusable_settings_before_loading(capsys, tmp_path, bad):
    msg = run_error(capsys, ["generate", str(tmp_path / "not-loaded"), *bad])
    assert bad[0] in msg


def test_generate_warns_at_the_context_limit(capsys, config_file, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--config", config_file, "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    prompt = ["generate", str(run), "--prompt", "ROMEO.", "--temperature", "0"]
    assert main([*prompt, "--max-new-tokens", "100"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        "bittern: warning: the model's context is max_seq_len = 64 tokens: "
        "at most 58 new tokens follow it, not 100"
    )
    assert captured.out.startswith("ROMEO.") and len(captured.out.rstrip("\n").encode()) <= 64
    assert main([*prompt, "--max-new-tokens", "58"]) == 0
    assert capsys.readouterr().err == ""


def damage_meta(copy):
    meta = json.loads((copy / "meta.json").read_text())
    del meta["splits"]["train"]["shards"][0]["sha256"]
    (copy / "meta.json").write_text(json.dumps(meta))


def flip_shard_byte(copy):
    shard = copy / "train_000.bin"
    blob = bytearray(shard.read_bytes())
    blob[100] ^= 0x01
    shard.write_bytes(bytes(blob))


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda copy: shutil.rmtree(copy), "does not exist"),
        (lambda copy: (copy / "meta.json").unlink(), "not a prepared dataset"),
        (damage_meta, "malformed dataset meta"),
        (flip_shard_byte, "corrupt"),
        (lambda copy: (copy / "val_000.bin").unlink(), "missing shard"),
    ],
)
def test_a_data_error_on_train_writes_nothing(capsys, tmp_path, dataset, damage, named):
    copy = shutil.copytree(dataset, tmp_path / "data")
    damage(copy)
    cfg = write_config(tmp_path / "c.toml", tiny_config_dict(copy, train={"steps": 2}))
    out = tmp_path / "runs" / "r"
    assert named in run_error(capsys, ["train", "--config", cfg, "--out", str(out)])
    assert not out.parent.exists()


def test_train_and_eval_say_what_they_scored(capsys, config_file, tmp_path, dataset):
    import math
    import re

    from bittern.data.loader import TokenDataset
    from bittern.eval import val_windows

    run = tmp_path / "run"
    total = val_windows(TokenDataset(dataset), 32)
    assert main(["train", "--config", config_file, "--out", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    # train.eval_batches (4) x train.batch_size (8) windows of train.seq_len (32) tokens
    assert f"(first 32 of {total:,} validation windows, 1,024 tokens; `bittern eval {run}` scores all)" in out
    loss, ppl = re.search(r"unigram baseline loss ([\d.]+) \| perplexity ([\d.]+)", out).groups()
    assert float(ppl) == pytest.approx(math.exp(float(loss)), rel=1e-3)
    assert main(["eval", str(run)]) == 0
    assert f"| all {total:,} validation windows, {total * 32:,} tokens" in capsys.readouterr().out


def test_a_complete_run_says_so_and_how_to_train_longer(capsys, config_file, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--config", config_file, "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", "--config", config_file, "--out", str(run), "--resume", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"run {run} is already complete (4 of 4 steps); nothing was trained" in out
    assert "rerun with --resume --train.steps=N (N > 4)" in out and "done:" not in out
    argv = ["train", "--config", config_file, "--out", str(run), "--resume", "--quiet", "--train.steps=6"]
    assert main(argv) == 0
    assert f"done: 6 steps in {run}" in capsys.readouterr().out


def test_version_and_bare_help(capsys):
    import bittern

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"bittern {bittern.__version__}"
    assert main([]) == 0  # bare `bittern`: the help, on stdout
    out = capsys.readouterr().out
    assert out.startswith("usage: bittern") and "train" in out and "generate" in out


def test_generate_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for default in ("200", "0.8", "50", "auto"):
        assert f"(default: {default})" in out
