"""Held-out perplexity and bits per byte on a prepared dataset's validation split."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from bittern.data.loader import TokenDataset


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: TokenDataset,
    seq_len: int,
    batch_size: int,
    max_batches: int | None = None,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, float]:
    """Mean next-token cross-entropy (nats) over validation windows, its perplexity, and
    bits per byte (tokenizer-independent: total bits over the UTF-8 bytes those tokens hold)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in data.val_batches(seq_len, batch_size, max_batches or None):
        x, y = x.to(device), y.to(device)
        with autocast or contextlib.nullcontext():
            logits = model(x)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    loss = total / max(count, 1)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "bits_per_byte": loss / math.log(2) / data.bytes_per_token("val"),
        "tokens": count,
    }
