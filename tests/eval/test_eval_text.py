"""Scoring a raw text: rolling windows predict every token once; the sums equal plain forwards."""

from __future__ import annotations

import math

import pytest
import torch

import bittern
from bittern.eval.perplexity import evaluate_text, rolling_windows, text_nll
from tests.eval.conftest import HELD_OUT, direct_nll


@pytest.mark.parametrize("n,context", [(1, 4), (7, 4), (8, 4), (9, 4), (20, 32), (33, 8)])
def test_rolling_windows_score_every_token_once_with_full_context(n, context):
    scored = []
    for start, k in rolling_windows(n, context):
        length = min(context, n)
        end = start + length  # the window's inputs are seq[start:end], it predicts seq[end-k+1 : end+1]
        assert 0 <= start and end <= n and 1 <= k <= length
        scored += range(end - k, end)  # indices into the n tokens after the prefix
    assert scored == list(range(n))


def test_text_nll_equals_one_forward_when_the_text_fits(runs):
    model, tok = bittern.load(runs["ternary"])
    ids = tok.encode(HELD_OUT)
    assert len(ids) <= model.config.max_seq_len
    expected = direct_nll(model, tok.eos_id, ids)
    assert text_nll(model, ids, model.config.max_seq_len, tok.eos_id) == pytest.approx(expected, rel=1e-5)


def test_text_nll_windows_equal_separate_forwards(runs):
    """Context 8 on a 3-window text: each window scored alone, from the windowing's definition."""
    model, tok = bittern.load(runs["fp"])
    ids = tok.encode(HELD_OUT)[:21]
    seq = [tok.eos_id, *ids]
    expected = 0.0
    for a in range(0, 21, 8):
        b = min(a + 8, 21)  # score ids[a:b] with the 8 tokens before ids[b-1] as input
        with torch.no_grad():
            logits = model(torch.tensor([seq[b - 8 : b]]))[0].float()
        logp = torch.log_softmax(logits, -1)[8 - (b - a) :]
        expected -= logp[torch.arange(b - a), torch.tensor(ids[a:b])].sum().item()
    for batch in (1, 2, 8):
        assert text_nll(model, ids, 8, tok.eos_id, batch_size=batch) == pytest.approx(expected, rel=1e-5)


def test_evaluate_text_bits_per_byte_counts_the_bytes(runs):
    model, tok = bittern.load(runs["bpe"])
    ids = tok.encode(HELD_OUT)
    assert len(ids) < len(HELD_OUT.encode())  # BPE: fewer tokens than bytes
    total = direct_nll(model, tok.eos_id, ids)
    result = evaluate_text(model, ids, len(HELD_OUT.encode()), model.config.max_seq_len, tok.eos_id)
    assert result["tokens"] == len(ids)
    assert result["loss"] == pytest.approx(total / len(ids), rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(total / math.log(2) / len(HELD_OUT.encode()), rel=1e-5)
