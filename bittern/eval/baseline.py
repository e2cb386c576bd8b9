"""The unigram baseline: what a model that ignores context would score on validation."""

from __future__ import annotations

import math

import numpy as np

from bittern.data.loader import TokenDataset


def unigram_loss(data: TokenDataset, chunk: int = 1 << 22) -> float:
    """Cross-entropy (nats/token) of the validation split under the train split's token
    frequencies (add-one smoothed): the score a model must clearly beat to have learned."""
    counts = np.zeros(data.vocab_size, dtype=np.float64)
    n = data.num_tokens("train")
    for start in range(0, n, chunk):
        part = data.read("train", start, min(chunk, n - start))
        counts += np.bincount(part, minlength=data.vocab_size)[: data.vocab_size]
    logp = np.log((counts + 1) / (counts.sum() + data.vocab_size))
    val = data.read("val", 0, data.num_tokens("val"))
    return float(-logp[val].mean()) if len(val) else math.nan
