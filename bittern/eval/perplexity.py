"""Held-out perplexity and bits per byte: on a prepared dataset's validation split, or on a raw
text scored with rolling windows (tokenizer-independent, so runs with different tokenizers compare)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

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
    bits per byte (total bits over the UTF-8 bytes those tokens hold, from the split's mean
    bytes per token: comparable only between runs of the same tokenizer)."""
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


def rolling_windows(n: int, context: int) -> Iterator[tuple[int, int]]:
    """(input start, scored count) of each window over prefix + n tokens (n + 1 in all).

    Window k scores tokens [k*context, min((k+1)*context, n)) once each, and takes as input the
    `min(context, n)` tokens ending just before the last of them, so every prediction has as
    much context as fits (the last window reaches back past its own first token). This is the
    windowing of lm-evaluation-harness's loglikelihood_rolling.
    """
    for a in range(0, n, context):
        b = min(a + context, n)
        yield max(0, b - context), b - a


@torch.no_grad()
def text_nll(
    model: nn.Module,
    ids: list[int],
    context: int,
    prefix_id: int,
    batch_size: int = 8,
    autocast: contextlib.AbstractContextManager | None = None,
) -> float:
    """Total negative log-likelihood (nats) of every token of `ids`, the first conditioned on
    `prefix_id` (EOS: the start of a document, as in training), in windows of `context` tokens."""
    if not ids:
        return 0.0
    device = next(model.parameters()).device
    seq = torch.tensor([prefix_id, *ids], dtype=torch.long)
    length = min(context, len(ids))
    windows = list(rolling_windows(len(ids), context))
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        x = torch.stack([seq[s : s + length] for s, _ in chunk]).to(device)
        y = torch.stack([seq[s + 1 : s + length + 1] for s, _ in chunk]).to(device)
        scored = torch.tensor([k for _, k in chunk], device=device)
        with autocast or contextlib.nullcontext():
            logits = model(x)
        nll = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")
        keep = torch.arange(length, device=device) >= length - scored[:, None]
        total += torch.where(keep, nll, 0.0).sum(dtype=torch.float64)
    return float(total)


def evaluate_text(
    model: nn.Module,
    tokens: list[int],
    num_bytes: int,
    context: int,
    prefix_id: int,
    batch_size: int = 8,
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, float]:
    """Loss per token, perplexity and bits per byte of a raw text's tokens. Bits per byte is
    total nats / ln 2 / the text's UTF-8 bytes: every byte is paid for, whatever the tokenizer."""
    was_training = model.training
    model.eval()
    total = text_nll(model, tokens, context, prefix_id, batch_size, autocast)
    model.train(was_training)
    loss = total / max(len(tokens), 1)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "bits_per_byte": total / math.log(2) / max(num_bytes, 1),
        "tokens": len(tokens),
    }
