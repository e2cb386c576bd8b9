"""Sampling: settings it cannot use are refused, and the context's limit is stated, not silent."""

from __future__ import annotations

import math

import pytest
import torch

from bittern.errors import BitternError
from bittern.generate import check_sampling, context_warning, fit_context, sample
from bittern.models import build_model
from bittern.models.config import ModelConfig

CONTEXT = 16


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=CONTEXT)
    return build_model(cfg.resolved(vocab_size=40)).eval()


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"max_new_tokens": -3}, "--max-new-tokens"),
        ({"temperature": -0.5}, "--temperature"),
        ({"temperature": math.nan}, "--temperature"),
        ({"temperature": math.inf}, "--temperature"),
        ({"top_k": -1}, "--top-k"),
        ({"num_samples": 0}, "--num-samples"),
        ({"seed": -1}, "--seed"),
        ({"seed": 2**63 - 2, "num_samples": 3}, "--seed"),
    ],
)
def test_unusable_settings_are_refused(kwargs, named):
    args = {"max_new_tokens": 5, "temperature": 0.8, "top_k": 50} | kwargs
    with pytest.raises(BitternError, match=named):
        check_sampling(**args)


def test_edge_settings_are_allowed(model):
    check_sampling(0, 0.0, 0, num_samples=1, seed=2**63 - 1)
    check_sampling(5, 1e-3, None, num_samples=2, seed=2**63 - 2)
    assert sample(model, [1, 2, 3], 0) == []
    with pytest.raises(BitternError, match="--max-new-tokens"):
        sample(model, [1, 2, 3], -3)  # was a RuntimeError from the KV cache


def test_fit_context_shares_the_window():
    assert fit_context(10, 200, 64) == (10, 54)
    assert fit_context(10, 5, 64) == (10, 5)
    assert fit_context(100, 200, 64) == (63, 1)  # the prompt's tail, and one new token
    assert fit_context(0, 200, 64) == (1, 63)  # an empty prompt is one EOS token
    assert fit_context(3, 0, 64) == (3, 0)


def test_the_warning_names_the_limit():
    assert context_warning(10, 54, 64) is None
    note = context_warning(10, 200, 64)
    assert "max_seq_len = 64" in note and "at most 54 new tokens" in note and "200" in note
    note = context_warning(100, 200, 64)
    assert "last 63 of 100" in note and "at most 1 new tokens" in note


def test_sample_stops_at_the_context(model):
    gen = torch.Generator().manual_seed(0)
    out = sample(model, [1, 2, 3, 4], 100, temperature=1.0, top_k=None, generator=gen)
    assert len(out) == CONTEXT - 4
    long_prompt = list(range(1, 31))
    assert sample(model, long_prompt, 100, temperature=0) == sample(
        model, long_prompt[-15:], 1, temperature=0
    )
