"""Shard verification: SHA-256 against meta.json and ids against the vocabulary, read once per file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

import bittern.data.shards as shards
from bittern.data.loader import TokenDataset
from bittern.errors import BitternError


@pytest.fixture
def copy(tmp_path, byte_dataset):
    """A private copy of the prepared byte dataset, free to corrupt, with no verdicts recorded yet
    (other tests' opens of the shared dataset record theirs in it)."""
    return shutil.copytree(
        byte_dataset, tmp_path / "copy", ignore=shutil.ignore_patterns(shards.VERIFIED_FILE)
    )


@pytest.fixture
def reads(monkeypatch):
    """The shard files read in full by verify_shards, in order."""
    seen = []
    real = shards._check_shard

    def counting(file, *args):
        seen.append(file.name)
        return real(file, *args)

    monkeypatch.setattr(shards, "_check_shard", counting)
    return seen


def flip_byte(file, index: int = 1234) -> None:
    """Corrupt `file` in place, keeping its size."""
    data = bytearray(file.read_bytes())
    data[index] ^= 0x01
    file.write_bytes(bytes(data))


def shard_names(path) -> list[str]:
    meta = json.loads((path / "meta.json").read_text())
    return [s["file"] for split in ("train", "val") for s in meta["splits"][split]["shards"]]


def test_a_shard_corrupted_in_place_is_refused(copy):
    TokenDataset(copy)
    flip_byte(copy / "train_000.bin")
    with pytest.raises(BitternError, match=r"train_000\.bin is corrupt: its SHA-256"):
        TokenDataset(copy)
    TokenDataset(copy, verify=False)  # the caller may opt out


def test_each_shard_is_read_once_until_it_changes(copy, reads):
    TokenDataset(copy)
    assert reads == shard_names(copy)
    reads.clear()
    TokenDataset(copy)
    TokenDataset(copy)
    assert reads == []  # the verdict is remembered in the data folder
    assert set(json.loads((copy / shards.VERIFIED_FILE).read_text())) == set(shard_names(copy))
    val = copy / "val_000.bin"
    st = val.stat()
    os.utime(val, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    TokenDataset(copy)
    assert reads == ["val_000.bin"]


def test_restoring_the_mtime_does_not_hide_a_corruption(copy):
    TokenDataset(copy)
    shard = copy / "train_000.bin"
    st = shard.stat()
    flip_byte(shard)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    while shard.stat().st_ctime_ns == st.st_ctime_ns:  # the clock's tick may be coarse
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(BitternError, match="corrupt"):
        TokenDataset(copy)


def test_a_recorded_verdict_is_not_trusted_for_another_hash(copy, reads):
    TokenDataset(copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["splits"]["val"]["shards"][0]["sha256"] = "0" * 64
    (copy / "meta.json").write_text(json.dumps(meta))
    reads.clear()
    with pytest.raises(BitternError, match=r"val_000\.bin is corrupt"):
        TokenDataset(copy)
    assert reads == ["val_000.bin"]


def test_ids_outside_the_vocabulary_are_refused(copy):
    shard = copy / "train_000.bin"
    tokens = np.fromfile(shard, dtype=np.uint16)
    tokens[777] = 300  # the byte vocabulary has 257 ids; uint16 holds it silently
    tokens.tofile(shard)
    meta = json.loads((copy / "meta.json").read_text())
    meta["splits"]["train"]["shards"][0]["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BitternError, match="token id 300, outside the vocabulary of 257"):
        TokenDataset(copy)


def test_an_unwritable_record_still_verifies(copy, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("read-only folder")

    monkeypatch.setattr(shards.os, "replace", refuse)
    TokenDataset(copy)
    assert not (copy / shards.VERIFIED_FILE).exists()
    assert not [p for p in copy.iterdir() if p.name.endswith(".tmp")]
    flip_byte(copy / "val_000.bin")
    with pytest.raises(BitternError, match="corrupt"):
        TokenDataset(copy)


def test_a_garbled_record_is_ignored(copy, reads):
    (copy / shards.VERIFIED_FILE).write_text("[not, a record")
    TokenDataset(copy)
    assert reads == shard_names(copy)
    flip_byte(copy / "train_000.bin")
    with pytest.raises(BitternError, match="corrupt"):
        TokenDataset(copy)
