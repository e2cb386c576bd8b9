"""The SmolLM2 conversion benchmark's pieces on the CPU: carrying a file in parts, retokenizing a
prepared dataset, and the whole script end to end on a tiny GGUF."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.retokenize import retokenize, split_tokens
from benchmarks.smollm2_convert import plan_steps, step_times
from benchmarks.split_file import join, split
from bittern.data.loader import TokenDataset
from bittern.data.prepare import SPLITS, prepare_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("xz", [False, True])
def test_split_and_join_give_the_file_back(tmp_path, xz):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 7, size=300_001, dtype=np.uint8).tobytes()  # compressible, odd length
    src = tmp_path / "model.gguf"
    src.write_bytes(data)
    dirs = [tmp_path / ".dd1", tmp_path / ".dd2", tmp_path / ".dd3"]
    manifest = split(src, dirs, xz=xz)
    assert [len(list(d.glob("*.part[0-9]*"))) for d in dirs] == [1, 1, 1]
    sizes = [p["bytes"] for p in manifest["parts"]]
    assert max(sizes) - min(sizes) <= 2 and (sum(sizes) < len(data)) == xz
    assert join(tmp_path / "out" / "model.gguf", dirs).read_bytes() == data


def test_join_refuses_a_damaged_part(tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(bytes(range(256)) * 100)
    dirs = [tmp_path / "a", tmp_path / "b"]
    split(src, dirs)
    part = next(dirs[1].glob("*.part[0-9]*"))
    damaged = bytearray(part.read_bytes())
    damaged[5] ^= 1
    part.write_bytes(bytes(damaged))
    with pytest.raises(SystemExit, match="SHA-256"):
        join(tmp_path / "out.bin", dirs)
    assert not (tmp_path / "out.bin").exists()


@pytest.fixture(scope="module")
def bpe_dataset(tmp_path_factory, corpus_folder) -> Path:
    out = tmp_path_factory.mktemp("bpe") / "ds"
    return prepare_dataset(
        str(corpus_folder), out, tokenizer="bpe", vocab_size=400, val_fraction=0.2, progress=False
    )


def test_decoded_text_prepares_back_to_the_same_tokens(bpe_dataset, tmp_path):
    """Decoded with its own tokenizer and prepared again with it, a dataset holds the same pieces,
    token for token, in the same splits: the decoding is lossless and the split is kept (the order
    of the pieces within a split may change: the splitter holds one piece of each split back)."""
    again = retokenize(bpe_dataset, tmp_path / "text", str(bpe_dataset / "tokenizer"), tmp_path / "again")
    a, b = TokenDataset(bpe_dataset), TokenDataset(again)
    for name in SPLITS:
        pieces_a = sorted(p.tobytes() for p in split_tokens(a, name))
        pieces_b = sorted(p.tobytes() for p in split_tokens(b, name))
        assert len(pieces_a) > 0 and pieces_a == pieces_b, name
        assert a.num_tokens(name) == b.num_tokens(name)
    assert b.meta["splits"]["val"]["bytes"] == a.meta["splits"]["val"]["bytes"]


def test_step_plan_fits_the_budget():
    logged = [(1, 0.5), (1, 0.5), (50, 0.5), (1, 1.0)]  # (tokens/s, lambda): two compiling steps first
    records = [{"tokens_per_sec": v, "quant_lambda": lam} for v, lam in logged]
    assert step_times(records, 100, drop=2) == {"blend": 2.0, "quantized": 100.0}
    n = plan_steps(budget_s=100.0, overhead_s=20.0, blend_s=2.0, step_s=1.0, ramp_frac=0.1)
    assert 20 + 0.1 * n * 2 + 0.9 * n * 1 <= 100 < 20 + 0.1 * (n + 1) * 2 + 0.9 * (n + 1)


def run_script(tmp_path, corpus_folder, source_data, *extra) -> dict:
    from tests.convert.conftest import make_hf_model, tiny_tokenizer, write_gguf

    pytest.importorskip("gguf")
    text = tmp_path / "eval.txt"
    text.write_text((corpus_folder / "play_0.txt").read_text()[:4000])
    gguf = write_gguf(make_hf_model("llama"), tiny_tokenizer(), tmp_path / "tiny.gguf")
    out = tmp_path / "r.json"
    cmd = [sys.executable, "benchmarks/smollm2_convert.py", f"--gguf={gguf}", f"--source-data={source_data}"]
    cmd += [f"--text={text}", f"--out={out}", "--val-windows=32", "--eval-batch=8", "--batch-size=4"]
    cmd += ["--micro-batch-size=2", "--seq-len=32", "--device=cpu", "--no-compile", *extra]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(out.read_text())


def test_script_end_to_end_on_a_tiny_gguf(tmp_path, corpus_folder, bpe_dataset):
    """GGUF -> teacher run -> retokenized data -> calibration -> student -> JSON, on the CPU."""
    r = run_script(tmp_path, corpus_folder, bpe_dataset, "--deadline=600", "--max-steps=3", "--calib-steps=4")
    assert r["student_train"]["steps_done"] == 3 and r["student_train"]["tokens"] == 3 * 4 * 32
    assert r["student_train"]["stopped"] is None and r["calibration"]["planned_steps"] == 3
    assert r["data"]["vocab_size"] == 300 and r["data"]["train_tokens"] > 0
    for who in ("teacher", "student"):
        for where in ("text", "val"):
            assert r[who][where]["perplexity"] > 1, (who, where)
    student, teacher = r["student"]["text"]["perplexity"], r["teacher"]["text"]["perplexity"]
    assert r["ratio"]["text"] == pytest.approx(student / teacher)


def test_script_stops_the_run_at_the_deadline(tmp_path, corpus_folder, bpe_dataset):
    """Past its deadline the run is stopped through the Trainer's preemption path and its last
    checkpoint is scored."""
    r = run_script(tmp_path, corpus_folder, bpe_dataset, "--deadline=1", "--steps=100000")
    run = r["student_train"]
    assert "stopped by signal" in run["stopped"] and 1 <= run["steps_done"] < 100000
    assert r["student"]["val"]["perplexity"] > 1
