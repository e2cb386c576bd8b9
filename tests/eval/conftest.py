"""Tiny trained runs for the eval tests: a 1.58-bit run, its full-precision twin (both on the
byte dataset) and a run with a BPE tokenizer, plus a direct scoring helper to check against."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bittern.config import config_from_dict
from bittern.data.prepare import prepare_dataset
from bittern.train import train
from tests.conftest import tiny_config_dict

HELD_OUT = "ROMEO.\nThou art not my friend, and I am not thine.\n"


def direct_nll(model: torch.nn.Module, prefix: int, ids: list[int]) -> float:
    """-sum log P(ids[i] | prefix, ids[:i]) from one plain forward pass (ids must fit the model)."""
    with torch.no_grad():
        logits = model(torch.tensor([[prefix, *ids[:-1]]]))[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return -logp[torch.arange(len(ids)), torch.tensor(ids)].sum().item()


def _train(dataset: Path, out: Path, **sections) -> Path:
    sections.setdefault("train", {}).update(steps=6, eval_every=3, eval_batches=2)
    sections.setdefault("checkpoint", {}).update(every=6)
    train(config_from_dict(tiny_config_dict(dataset, **sections)), out, progress=False)
    return out


@pytest.fixture(scope="session")
def bpe_dataset(tmp_path_factory, corpus_folder) -> Path:
    out = tmp_path_factory.mktemp("bpe") / "plays"
    return prepare_dataset(
        str(corpus_folder), out, tokenizer="bpe", vocab_size=300, val_fraction=0.1, progress=False
    )


@pytest.fixture(scope="session")
def runs(tmp_path_factory, dataset, bpe_dataset) -> dict[str, Path]:
    """name -> run folder: "ternary", "fp" (its full-precision twin) and "bpe" (ternary, BPE)."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "ternary": _train(dataset, root / "ternary"),
        "fp": _train(dataset, root / "fp", model={"quant": "none"}),
        "bpe": _train(bpe_dataset, root / "bpe"),
    }
