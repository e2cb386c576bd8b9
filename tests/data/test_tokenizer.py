import json
import shutil
import sys

import pytest

from bittern.data.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    HFTokenizer,
    build_tokenizer,
    load_tokenizer,
)
from bittern.errors import BitternError

TEXT = "Ünïcode — 日本語 😀 and plain ASCII.\n\ttabs  and  spaces\n"


def test_byte_tokenizer_ids_are_utf8_bytes_and_round_trip(tmp_path):
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    assert ids == list(TEXT.encode("utf-8"))
    assert (tok.vocab_size, tok.eos_id) == (257, 256)
    assert tok.decode(ids + [256]) == TEXT
    assert tok.decode([0xFF, 104, 256, 105]) == "\ufffdhi"
    tok.save(tmp_path)
    assert json.loads((tmp_path / "tokenizer_meta.json").read_text())["kind"] == "byte"
    assert load_tokenizer(tmp_path).identity() == tok.identity() == ByteTokenizer().identity()


def test_bpe_training_is_deterministic_and_round_trips(corpus):
    a = BPETokenizer.train(iter(corpus), 600)
    b = BPETokenizer.train(iter(corpus), 600)
    assert a.identity() == b.identity()
    assert a.identity()["kind"] == "bpe" and a.vocab_size == 600
    assert a.encode(TEXT) == b.encode(TEXT)
    assert len(a.encode(corpus[0])) < len(corpus[0].encode())  # merges were learned
    assert a.decode(a.encode(TEXT)) == TEXT
    assert a.eos_id == a.backend.token_to_id("<|endoftext|>")
    assert a.eos_id not in a.encode(TEXT + "<|endoftext|>"[:5])
    assert a.decode(a.encode("x") + [a.eos_id]) == "x"


def test_bpe_identity_depends_on_corpus(corpus):
    a = BPETokenizer.train(iter(corpus[:3]), 400)
    b = BPETokenizer.train(iter(corpus[3:6] + ["zzzz qqqq " * 500]), 400)
    assert a.identity() != b.identity()


def test_bpe_save_load(tmp_path, corpus):
    a = BPETokenizer.train(iter(corpus[:4]), 500)
    a.save(tmp_path / "tok")
    b = load_tokenizer(tmp_path / "tok")
    assert isinstance(b, BPETokenizer)
    assert b.identity() == a.identity() and b.eos_id == a.eos_id
    assert b.encode(TEXT) == a.encode(TEXT)


def test_hf_tokenizer_json_folder_is_reloadable_without_source(tmp_path, corpus):
    bpe = BPETokenizer.train(iter(corpus[:4]), 500)
    src = tmp_path / "hf"
    src.mkdir()
    (src / "tokenizer.json").write_text(bpe.backend.to_str())
    (src / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    hf = build_tokenizer(str(src), None, 0)
    assert isinstance(hf, HFTokenizer)
    assert hf.encode(TEXT) == bpe.encode(TEXT) and hf.eos_id == bpe.eos_id
    hf.save(tmp_path / "saved")
    shutil.rmtree(src)
    again = load_tokenizer(tmp_path / "saved")
    assert again.identity() == hf.identity() and again.encode(TEXT) == bpe.encode(TEXT)


def test_a_saved_tokenizer_folder_builds_the_saved_tokenizer(tmp_path, corpus):
    """A run's tokenizer/ keeps its own EOS (a GGUF's may be one no guess would pick), so a dataset
    prepared with `--tokenizer RUN/tokenizer` has the run's tokenizer identity."""
    bpe = BPETokenizer.train(iter(corpus[:4]), 500)
    chat = HFTokenizer(bpe.backend, "<|endoftext|>")
    chat.eos_token, chat.eos_id = "a", bpe.backend.token_to_id("a")  # an EOS the guesses would not pick
    chat.save(tmp_path / "run_tokenizer")
    built = build_tokenizer(str(tmp_path / "run_tokenizer"), None, 0)
    assert built.identity() == chat.identity() and built.eos_id == chat.eos_id != bpe.eos_id
    bpe.save(tmp_path / "bpe")
    assert build_tokenizer(str(tmp_path / "bpe"), None, 0).identity() == bpe.identity()


def test_hf_autotokenizer_folder(tmp_path, corpus):
    bpe = BPETokenizer.train(iter(corpus[:4]), 500)
    bpe.backend.model.save(str(tmp_path))  # vocab.json + merges.txt, no tokenizer.json
    config = {"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    hf = HFTokenizer.from_path(tmp_path)
    assert hf.encode(TEXT) == bpe.encode(TEXT)
    assert hf.eos_id == bpe.eos_id


def test_hf_tokenizer_with_large_vocab(tmp_path, big_vocab_tokenizer_dir):
    tok = big_vocab_tokenizer_dir(tmp_path)
    hf = HFTokenizer.from_path(tok)
    assert hf.vocab_size == 70_000 + 256 + 1
    assert hf.decode(hf.encode(TEXT)) == TEXT


def test_gguf_without_gguf_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(BitternError, match="pip install gguf"):
        build_tokenizer(str(model), None, 0)


def test_bad_specs(tmp_path):
    with pytest.raises(BitternError, match="no-such-tokenizer"):
        build_tokenizer("no-such-tokenizer", None, 100)
    with pytest.raises(BitternError, match="bpe"):
        build_tokenizer("bpe", None, 100)
    with pytest.raises(BitternError, match="tokenizer_meta.json"):
        load_tokenizer(tmp_path)
