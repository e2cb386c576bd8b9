"""Shared fixtures for the data tests: a small synthetic corpus and prepared datasets."""

import os
import random
from pathlib import Path

import pytest

from bittern.data.prepare import prepare_dataset

_RNG = random.Random(1)
WORDS = ["naïve", "café", "日本語", "😀", "—", "señor"] + [
    "".join(_RNG.choice("etaoinshrdlucmfwyp") for _ in range(_RNG.randint(1, 9))) for _ in range(400)
]


def pytest_configure(config):
    config.addinivalue_line("markers", "network: needs the package index (BITTERN_NETWORK_TESTS=1)")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("BITTERN_NETWORK_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="set BITTERN_NETWORK_TESTS=1 to run network tests")
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip)


def make_document(rng: random.Random, num_bytes: int) -> str:
    """Random lines of words until the text has about `num_bytes` UTF-8 bytes."""
    lines, size = [], 0
    while size < num_bytes:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 14))) + "\n"
        lines.append(line)
        size += len(line.encode())
    return "".join(lines)


def make_corpus(seed: int = 0) -> list[str]:
    """Documents from 3 KB to 150 KB, so some are cut into several pieces."""
    rng = random.Random(seed)
    return [make_document(rng, rng.choice([3_000, 20_000, 70_000, 150_000])) for _ in range(14)]


def write_corpus(directory: Path, documents: list[str]) -> Path:
    """Write documents as doc_00.txt, doc_01.txt, ... (sorted order = list order)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(documents):
        (directory / f"doc_{i:02d}.txt").write_text(text, encoding="utf-8")
    return directory


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return make_corpus()


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory, corpus) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), corpus)


@pytest.fixture(scope="session")
def byte_dataset(tmp_path_factory, corpus_dir) -> Path:
    out = tmp_path_factory.mktemp("byte_ds") / "ds"
    return prepare_dataset(str(corpus_dir), out, val_fraction=0.1, progress=False)
