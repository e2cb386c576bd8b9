"""The unigram baseline: what a model that ignores context would score on held-out text."""

from __future__ import annotations

import math

import numpy as np

from bittern.data.loader import TokenDataset


def unigram_logprobs(data: TokenDataset, chunk: int = 1 << 22) -> np.ndarray:
    """Log-probability of each token id under the train split's frequencies (add-one smoothed)."""
    counts = np.zeros(data.vocab_size, dtype=np.float64)
    n = data.num_tokens("train")
    for start in range(0, n, chunk):
        part = data.read("train", start, min(chunk, n - start))
        counts += np.bincount(part, minlength=data.vocab_size)[: data.vocab_size]
    return np.log((counts + 1) / (counts.sum() + data.vocab_size))


def unigram_loss(data: TokenDataset, chunk: int = 1 << 22) -> float:
    """Cross-entropy (nats/token) of the validation split under the train split's token
    frequencies: the score a model must clearly beat to have learned."""
    val = data.read("val", 0, data.num_tokens("val"))
    return float(-unigram_logprobs(data, chunk)[val].mean()) if len(val) else math.nan


def unigram_text_nll(data: TokenDataset, tokens: list[int]) -> float:
    """Total nats of `tokens` (the text in the dataset's tokenizer) under the same unigram model."""
    return float(-unigram_logprobs(data)[np.asarray(tokens, dtype=np.int64)].sum())
