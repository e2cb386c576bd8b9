"""Validation-split scoring: the same windows and the same sums however they are split up."""

from __future__ import annotations

import pytest
import torch

from bittern.data.loader import TokenDataset
from bittern.errors import BitternError
from bittern.eval import evaluate, rank_share, scope, score_windows, val_windows
from bittern.models import build_model


@pytest.fixture
def model_and_data(tiny_config, dataset):
    data = TokenDataset(dataset)
    torch.manual_seed(0)
    model = build_model(tiny_config().model.resolved(vocab_size=data.vocab_size)).eval()
    return model, data


def direct_sums(model, data, seq_len: int, windows: range) -> tuple[float, int]:
    """Summed nats and tokens, one window per forward pass."""
    nats, tokens = 0.0, 0
    for i in windows:
        w = torch.from_numpy(data.read("val", i * seq_len, seq_len + 1).astype("int64"))
        with torch.no_grad():
            logits = model(w[None, :-1])[0]
        nats += torch.nn.functional.cross_entropy(logits.float(), w[1:], reduction="sum").item()
        tokens += seq_len
    return nats, tokens


@pytest.mark.parametrize("world", [1, 2, 3])
def test_rank_shares_cover_every_window_once(world):
    for n in (0, 1, 7, 12):
        shares = [rank_share(n, r, world) for r in range(world)]
        assert [i for s in shares for i in s] == list(range(n))
        assert len({len(s) for s in shares if len(s)}) <= 2 and len(shares[0]) == max(map(len, shares))


def test_shares_and_padding_sum_to_the_whole(model_and_data):
    model, data = model_and_data
    seq_len, n = 16, 11
    nats, tokens = direct_sums(model, data, seq_len, range(n))
    for world, batch in ((1, 11), (2, 3), (3, 2), (4, 1)):
        share0 = len(rank_share(n, 0, world))
        batches = -(-share0 // batch)
        parts = [
            score_windows(model, data, seq_len, rank_share(n, r, world), batch, batches) for r in range(world)
        ]
        total = torch.stack(parts).sum(0).tolist()
        assert total[1] == tokens
        assert total[0] == pytest.approx(nats, rel=1e-6)


def test_evaluate_says_what_it_scored(model_and_data):
    model, data = model_and_data
    total = val_windows(data, 32)
    assert total == (data.num_tokens("val") - 1) // 32
    some = evaluate(model, data, 32, 4, max_batches=2)
    assert (some["windows"], some["val_windows"], some["tokens"]) == (8, total, 8 * 32)
    assert scope(some) == f"first 8 of {total:,} validation windows, {8 * 32:,} tokens"
    every = evaluate(model, data, 32, 4)
    assert every["windows"] == total and scope(every).startswith(f"all {total:,} validation windows")
    with pytest.raises(BitternError, match="fewer than seq_len"):
        val_windows(data, data.num_tokens("val"))
