"""Fixtures shared by the tests: a small prepared corpus, a tiny config, the fused path on the CPU."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from bittern.config import config_from_dict
from bittern.data.prepare import prepare_dataset

NAMES = ["ROMEO", "JULIET", "NURSE", "FRIAR", "TYBALT", "MERCUTIO"]
WORDS = "the of and to my a i in you is that it not with me be your his but for this thou have so".split()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny ops are fastest on one thread, and intra-op spinning stalls on a busy 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("BITTERN_NETWORK_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="set BITTERN_NETWORK_TESTS=1 to run network tests")
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip)


def play_text(seed: int, lines: int) -> str:
    """Play-like text with structure a tiny model can learn quickly (speaker lines, common words)."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10)))
        out.append(f"{rng.choice(NAMES)}.\n{words.capitalize()}.\n")
    return "\n".join(out)


@pytest.fixture(scope="session")
def corpus_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plays")
    for i in range(6):
        (folder / f"play_{i}.txt").write_text(play_text(i, 1500))
    return folder


@pytest.fixture(scope="session")
def dataset(tmp_path_factory, corpus_folder) -> Path:
    """A byte-level prepared dataset (about 400 KB of text)."""
    out = tmp_path_factory.mktemp("ds") / "plays"
    return prepare_dataset(str(corpus_folder), out, tokenizer="byte", val_fraction=0.1, progress=False)


def tiny_config_dict(dataset: Path, **sections) -> dict:
    """A model and run small enough to train in seconds on one CPU core."""
    base = {
        "model": {
            "preset": "tiny",
            "dim": 32,
            "n_layers": 2,
            "n_heads": 2,
            "n_kv_heads": 1,
            "ffn_dim": 64,
            "max_seq_len": 64,
        },
        "data": {"path": str(dataset)},
        "train": {"steps": 20, "batch_size": 8, "seq_len": 32, "eval_every": 10, "eval_batches": 4},
        "optim": {"lr": 3e-3},
        "checkpoint": {"every": 10},
        "log": {"every": 1, "tensorboard": False},
    }
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return base


@pytest.fixture
def tiny_config(dataset):
    """Function (**section overrides) -> Config of a tiny run on `dataset`."""

    def make(**sections):
        return config_from_dict(tiny_config_dict(dataset, **sections))

    return make


@pytest.fixture
def cpu_kernels():
    """KernelOptions that run BitLinear's fused path on CPU tensors (the kernels interpreted by Triton).

    Skips without Triton or its interpreter (TRITON_INTERPRET=1, which tests/kernels and tests/nn set).
    """
    pytest.importorskip("triton")
    from bittern.kernels import available
    from bittern.nn import KernelOptions

    if not available("cpu"):
        pytest.skip("the kernels run on CPU tensors only under Triton's interpreter")
    return KernelOptions(devices=("cuda", "cpu"))
