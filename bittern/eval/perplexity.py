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
from bittern.errors import BitternError


def val_windows(data: TokenDataset, seq_len: int) -> int:
    """How many non-overlapping windows of seq_len (+1 target) tokens the validation split holds."""
    n = data.num_tokens("val")
    if seq_len < 1 or n < seq_len + 1:
        raise BitternError(f"val split of {data.path} has {n} tokens, fewer than seq_len+1={seq_len + 1}")
    return (n - 1) // seq_len


def rank_share(windows: int, rank: int, world: int) -> range:
    """Rank `rank`'s contiguous share of windows [0, windows): equal shares, the last may be short."""
    share = -(-windows // world)
    return range(min(rank * share, windows), min((rank + 1) * share, windows))


@torch.no_grad()
def score_windows(
    model: nn.Module,
    data: TokenDataset,
    seq_len: int,
    windows: range,
    batch_size: int,
    num_batches: int | None = None,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
) -> torch.Tensor:
    """[summed nats, tokens] (float64) of validation windows `windows`, `batch_size` at a time.

    `num_batches` (>= the batches `windows` needs) runs unscored batches after them: under
    FSDP2 every rank must call the model equally often, also when its share is shorter.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    batches = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
    for k in range(max(len(batches), num_batches or 0)):
        rows = batches[k] if k < len(batches) else range(1)  # padding: window 0, not counted
        x, y = (t.to(device) for t in data.val_window_batch(seq_len, rows))
        with autocast or contextlib.nullcontext():
            logits = model(x)
        if k < len(batches):
            nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
            sums += torch.stack([nll.double(), torch.tensor(y.numel(), dtype=torch.float64, device=device)])
    model.train(was_training)
    return sums


def figures(sums: torch.Tensor, data: TokenDataset, windows: int, val_windows: int) -> dict[str, float]:
    """Loss per token, perplexity and bits per byte (from the split's mean bytes per token) of
    score_windows' [summed nats, tokens], with the `windows` scored of the split's `val_windows`."""
    nats, tokens = sums.tolist()
    tokens = int(tokens)
    loss = nats / max(tokens, 1)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "bits_per_byte": loss / math.log(2) / data.bytes_per_token("val"),
        "tokens": tokens,
        "windows": windows,
        "val_windows": val_windows,
    }


def scope(result: dict) -> str:
    """What a validation result scored, e.g. "first 512 of 2,294 validation windows, 65,536 tokens"."""
    n, total = result["windows"], result["val_windows"]
    which = f"all {total:,}" if n == total else f"first {n:,} of {total:,}"
    return f"{which} validation windows, {result['tokens']:,} tokens"


def evaluate(
    model: nn.Module,
    data: TokenDataset,
    seq_len: int,
    batch_size: int,
    max_batches: int | None = None,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, float]:
    """Mean next-token cross-entropy (nats) over the first `max_batches` x `batch_size`
    validation windows (None: all), its perplexity, and bits per byte (total bits over the
    UTF-8 bytes those tokens hold, from the split's mean bytes per token: comparable only
    between runs of the same tokenizer). Also `windows` scored of `val_windows` in the split."""
    total = val_windows(data, seq_len)
    n = min(total, max_batches * batch_size) if max_batches else total
    sums = score_windows(model, data, seq_len, range(n), batch_size, None, device, autocast)
    return figures(sums, data, n, total)


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
