"""`bittern eval --text/--report`: honest bits per byte across tokenizers, the report folder."""

from __future__ import annotations

import math
from collections import Counter

import pytest

import bittern
from bittern.cli import EXIT_ERROR, main
from bittern.data.loader import TokenDataset
from bittern.errors import BitternError
from bittern.eval.baseline import unigram_text_nll
from bittern.eval.report import write_report
from bittern.eval.runs import evaluate_runs
from tests.eval.conftest import HELD_OUT, direct_nll

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "heldout.txt"
    path.write_text(HELD_OUT, encoding="utf-8")
    return path


def test_text_mode_scores_each_run_with_its_own_tokenizer(runs, text_file):
    names = ["ternary", "fp", "bpe"]
    result = evaluate_runs([str(runs[n]) for n in names], text_path=str(text_file), context=64)
    num_bytes = len(HELD_OUT.encode())
    assert result.exact_bytes and str(text_file) in result.source
    for name, row in zip(names, result.rows, strict=True):
        model, tok = bittern.load(runs[name])
        ids = tok.encode(HELD_OUT)
        total = direct_nll(model, tok.eos_id, ids)
        assert row["tokens"] == len(ids) and row["context"] == 64
        assert row["quant"] == ("none" if name == "fp" else "ternary")
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert row["loss"] == pytest.approx(total / len(ids), rel=1e-5)
        assert row["bits_per_byte"] == pytest.approx(total / math.log(2) / num_bytes, rel=1e-5)
    assert result.rows[2]["tokens"] < result.rows[0]["tokens"] == num_bytes


def test_unigram_baseline_on_a_text(dataset):
    data = TokenDataset(dataset)
    train = data.read("train", 0, data.num_tokens("train"))
    counts, n = Counter(train.tolist()), len(train)
    ids = data.tokenizer().encode(HELD_OUT)
    expected = -sum(math.log((counts[t] + 1) / (n + data.vocab_size)) for t in ids)
    assert unigram_text_nll(data, ids) == pytest.approx(expected, rel=1e-9)


def test_dataset_mode_refuses_mixed_tokenizers_and_names_text(runs):
    with pytest.raises(BitternError, match="tokenizer mismatch.*--text"):
        evaluate_runs([str(runs["ternary"]), str(runs["bpe"])], max_batches=1)


def test_report_table_and_plots(runs, text_file, tmp_path):
    listed = [str(runs["ternary"]), str(runs["fp"]), str(runs["bpe"])]
    result = evaluate_runs(listed, text_path=str(text_file))
    out = tmp_path / "report"
    report = write_report(result, listed, out).read_text()
    for row in [*result.rows, result.baseline]:
        assert f"| {row['run']} |" in report and f"{row['bits_per_byte']:.4f}" in report
    pngs = sorted(p.name for p in out.iterdir() if p.suffix == ".png")
    assert pngs == ["health_0_ternary.png", "health_2_bpe.png", "loss_curves.png"]  # no health for fp
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG and f"]({name})" in report


def test_cli_report_and_refusal(capsys, runs, text_file, tmp_path):
    out = tmp_path / "rep"
    argv = ["eval", str(runs["ternary"]), str(runs["bpe"]), "--text", str(text_file), "--report", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "unigram baseline" in printed and str(out / "report.md") in printed
    before = sorted(p.name for p in out.iterdir())
    assert main(argv) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0]
    assert sorted(p.name for p in out.iterdir()) == before
    assert main(["eval", str(runs["ternary"]), "--batches", "1", "--report", str(tmp_path / "ds")]) == 0
    assert "validation split" in (tmp_path / "ds" / "report.md").read_text()
