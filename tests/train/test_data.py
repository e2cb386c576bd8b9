"""The tokenizer a run used goes into its resolved config, so config.toml says what was trained on."""

from __future__ import annotations

import re
import tomllib

from bittern.config import DataConfig
from bittern.data.loader import TokenDataset
from bittern.train import Trainer, train
from bittern.train.data import resolved_tokenizer


def _saved_tokenizer(run) -> str:
    return tomllib.loads((run / "config.toml").read_text())["data"]["tokenizer"]


def test_unset_tokenizer_resolves_to_the_one_the_data_holds(dataset):
    data = TokenDataset(dataset)  # byte-level
    assert resolved_tokenizer(DataConfig(source="shakespeare"), data) == "byte"
    assert resolved_tokenizer(DataConfig(path=str(dataset)), data) == "byte"
    assert resolved_tokenizer(DataConfig(path=str(dataset), tokenizer="byte"), data) == "byte"


def test_run_without_a_tokenizer_writes_the_one_it_used_and_resumes(tiny_config, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(train={"steps": 2})
    assert cfg.data.tokenizer == ""
    train(cfg, run, progress=False)
    assert _saved_tokenizer(run) == "byte"
    Trainer(tiny_config(train={"steps": 4}), run, resume=True, progress=False).run()  # "" again: same run


def test_a_run_saved_with_an_empty_tokenizer_still_resumes(tiny_config, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(train={"steps": 2}), run, progress=False)
    saved = run / "config.toml"
    text, n = re.subn(r'(?m)^tokenizer = "byte"$', 'tokenizer = ""', saved.read_text())
    assert n == 1
    saved.write_text(text)  # as runs written before the tokenizer was resolved
    Trainer(
        tiny_config(train={"steps": 4}, data={"tokenizer": "byte"}), run, resume=True, progress=False
    ).run()
    assert _saved_tokenizer(run) == "byte"
