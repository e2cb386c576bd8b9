"""Shared fixtures for the data tests: a small synthetic corpus and prepared datasets."""

import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers

from bittern.data.prepare import prepare_dataset

_RNG = random.Random(1)
WORDS = ["naïve", "café", "日本語", "😀", "—", "señor"] + [
    "".join(_RNG.choice("etaoinshrdlucmfwyp") for _ in range(_RNG.randint(1, 9))) for _ in range(400)
]


def make_document(rng: random.Random, num_bytes: int) -> str:
    """Random lines of words until the text has about `num_bytes` UTF-8 bytes."""
    lines, size = [], 0
    while size < num_bytes:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 14))) + "\n"
        lines.append(line)
        size += len(line.encode())
    return "".join(lines)


def _make_corpus(seed: int = 0) -> list[str]:
    """Documents from 3 KB to 150 KB, so some are cut into several pieces."""
    rng = random.Random(seed)
    return [make_document(rng, rng.choice([3_000, 20_000, 70_000, 150_000])) for _ in range(14)]


def _write_corpus(directory: Path, documents: list[str]) -> Path:
    """Write documents as doc_00.txt, doc_01.txt, ... (sorted order = list order)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(documents):
        (directory / f"doc_{i:02d}.txt").write_text(text, encoding="utf-8")
    return directory


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return _make_corpus()


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory, corpus) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("corpus"), corpus)


@pytest.fixture(scope="session")
def byte_dataset(tmp_path_factory, corpus_dir) -> Path:
    out = tmp_path_factory.mktemp("byte_ds") / "ds"
    return prepare_dataset(str(corpus_dir), out, val_fraction=0.1, progress=False)


@pytest.fixture
def make_corpus():
    """Function seed -> list of synthetic documents."""
    return _make_corpus


@pytest.fixture
def big_vocab_tokenizer_dir():
    """Function directory -> folder with a 70k-token tokenizer.json (ids need 32 bits)."""
    return _big_vocab_tokenizer_dir


def _big_vocab_tokenizer_dir(directory):
    """A byte-level tokenizer.json with 70k filler tokens, so ids need more than 16 bits."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({f"<filler{i}>": len(alphabet) + i for i in range(70_000)})
    vocab["<|endoftext|>"] = len(vocab)
    raw = RawTokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.add_special_tokens(["<|endoftext|>"])
    directory.mkdir(parents=True, exist_ok=True)
    raw.save(str(directory / "tokenizer.json"))
    return directory
