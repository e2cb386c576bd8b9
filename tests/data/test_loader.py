import json
import shutil

import numpy as np
import pytest
import torch

from bittern.data.loader import TokenDataset
from bittern.data.prepare import prepare_dataset
from bittern.data.tokenizer import ByteTokenizer
from bittern.errors import BitternError


def raw_split(path, split):
    """The split's tokens straight from its shard files via np.memmap."""
    meta = json.loads((path / "meta.json").read_text())
    shards = meta["splits"][split]["shards"]
    return np.concatenate([np.memmap(path / s["file"], dtype=meta["dtype"], mode="r") for s in shards])


def test_train_batch_is_a_pure_function(byte_dataset):
    ds = TokenDataset(byte_dataset)
    x1, y1 = ds.train_batch(seed=1, step=7, batch_size=6, seq_len=32)
    x2, y2 = TokenDataset(byte_dataset).train_batch(seed=1, step=7, batch_size=6, seq_len=32)
    assert x1.dtype == torch.long and x1.shape == y1.shape == (6, 32)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, _ = ds.train_batch(seed=1, step=8, batch_size=6, seq_len=32)
    x4, _ = ds.train_batch(seed=2, step=7, batch_size=6, seq_len=32)
    assert not torch.equal(x1, x3) and not torch.equal(x1, x4)


def test_slices_concatenate_to_the_global_batch(byte_dataset):
    ds = TokenDataset(byte_dataset)
    full_x, full_y = ds.train_batch(seed=0, step=3, batch_size=8, seq_len=16)
    parts = [ds.train_batch(0, 3, 8, 16, start=s, count=c) for s, c in [(0, 3), (3, 1), (4, 4)]]
    assert torch.equal(torch.cat([p[0] for p in parts]), full_x)
    assert torch.equal(torch.cat([p[1] for p in parts]), full_y)
    tail_x, _ = ds.train_batch(0, 3, 8, 16, start=6)
    assert torch.equal(tail_x, full_x[6:])
    with pytest.raises(BitternError):
        ds.train_batch(0, 3, 8, 16, start=6, count=3)


def test_targets_are_inputs_shifted_in_the_raw_tokens(byte_dataset):
    ds = TokenDataset(byte_dataset)
    raw = raw_split(byte_dataset, "train").astype(np.int64)
    seq_len = 24
    x, y = ds.train_batch(seed=5, step=0, batch_size=4, seq_len=seq_len)
    windows = np.lib.stride_tricks.sliding_window_view(raw, seq_len + 1)
    for row_x, row_y in zip(x.numpy(), y.numpy(), strict=True):
        window = np.concatenate([row_x, row_y[-1:]])
        assert (windows == window).all(axis=1).any()
        assert np.array_equal(row_x[1:], row_y[:-1])


def test_multiple_shards_read_like_one(tmp_path, corpus_dir, byte_dataset):
    sharded = prepare_dataset(
        str(corpus_dir), tmp_path / "s", val_fraction=0.1, progress=False, shard_tokens=4_000
    )
    a, b = TokenDataset(byte_dataset), TokenDataset(sharded)
    assert len(b.meta["splits"]["train"]["shards"]) > 10
    for step in range(5):
        assert all(
            torch.equal(p, q)
            for p, q in zip(a.train_batch(0, step, 16, 512), b.train_batch(0, step, 16, 512), strict=True)
        )
    assert np.array_equal(b.read("train", 3_990, 30), raw_split(sharded, "train")[3_990:4_020])
    for p, q in zip(a.val_batches(300, 4), b.val_batches(300, 4), strict=True):
        assert torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])


def test_val_batches_deterministic_and_non_overlapping(byte_dataset):
    ds = TokenDataset(byte_dataset)
    seq_len, batch_size = 100, 7
    first, second = list(ds.val_batches(seq_len, batch_size)), list(ds.val_batches(seq_len, batch_size))
    assert len(first) == len(second)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second, strict=True)
    )
    raw = raw_split(byte_dataset, "val").astype(np.int64)
    windows = (len(raw) - 1) // seq_len
    inputs = torch.cat([x for x, _ in first]).reshape(-1).numpy()
    targets = torch.cat([y for _, y in first]).reshape(-1).numpy()
    assert np.array_equal(inputs, raw[: windows * seq_len])
    assert np.array_equal(targets, raw[1 : windows * seq_len + 1])
    assert all(x.shape[0] == batch_size for x, _ in first[:-1])
    assert len(list(ds.val_batches(seq_len, batch_size, max_batches=2))) == 2


def test_metadata_and_tokenizer(byte_dataset):
    ds = TokenDataset(byte_dataset)
    meta = ds.meta["splits"]["val"]
    assert ds.num_tokens("val") == meta["tokens"] == len(raw_split(byte_dataset, "val"))
    assert ds.bytes_per_token("val") == pytest.approx(meta["bytes"] / meta["tokens"])
    assert (ds.vocab_size, ds.eos_id) == (257, 256)
    assert ds.tokenizer().identity() == ds.tokenizer_identity == ByteTokenizer().identity()
    ds.check_tokenizer(ByteTokenizer().identity())
    wrong = dict(ds.tokenizer_identity, sha256="0" * 64)
    with pytest.raises(BitternError, match="tokenizer mismatch"):
        ds.check_tokenizer(wrong)
    with pytest.raises(BitternError, match="split"):
        ds.num_tokens("test")


def test_verify_detects_a_flipped_byte(tmp_path, byte_dataset):
    copy = shutil.copytree(byte_dataset, tmp_path / "copy")
    TokenDataset(copy, verify=True)
    shard = copy / "train_000.bin"
    data = bytearray(shard.read_bytes())
    data[1234] ^= 0x01
    shard.write_bytes(bytes(data))
    TokenDataset(copy, verify=False)  # only the sizes are checked
    with pytest.raises(BitternError, match="train_000.bin"):
        TokenDataset(copy)  # verified by default


def edit_meta(path, edit) -> None:
    meta = json.loads((path / "meta.json").read_text())
    edit(meta)
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda m: m.update(dtype="float7"), "dtype"),
        (lambda m: m.update(dtype="uint16", vocab_size=70_000), "dtype"),
        (lambda m: m.update(vocab_size="257"), "vocab_size"),
        (lambda m: m.update(eos_id=257), "eos_id"),
        (lambda m: m["splits"].update(val=[]), "splits"),
        (lambda m: m["splits"]["val"].pop("bytes"), "'val'"),
        (lambda m: m["splits"]["train"]["shards"][0].update(file="../train_000.bin"), "shard entry"),
        (lambda m: m["splits"]["train"]["shards"][0].pop("sha256"), "shard entry"),
        (lambda m: m["splits"]["train"]["shards"][0].update(tokens=-1), "shard entry"),
    ],
)
def test_malformed_meta_fields_are_named(tmp_path, byte_dataset, edit, named):
    copy = shutil.copytree(byte_dataset, tmp_path / "copy")
    edit_meta(copy, edit)
    with pytest.raises(BitternError, match=f"malformed dataset meta .*{named}"):
        TokenDataset(copy)


def test_missing_or_malformed_meta(tmp_path):
    with pytest.raises(BitternError, match="meta.json"):
        TokenDataset(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(BitternError, match="meta.json"):
        TokenDataset(tmp_path)


def test_split_shorter_than_a_window(byte_dataset):
    ds = TokenDataset(byte_dataset)
    n = ds.num_tokens("val")
    with pytest.raises(BitternError, match="fewer than"):
        next(ds.val_batches(seq_len=n, batch_size=1))
    x, _ = next(ds.val_batches(seq_len=n - 1, batch_size=1))
    assert x.shape == (1, n - 1)
    with pytest.raises(BitternError, match="fewer than"):
        ds.train_batch(0, 0, 1, seq_len=ds.num_tokens("train"))
