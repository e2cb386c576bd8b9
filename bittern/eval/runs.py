"""Evaluate several runs side by side on the same held-out text, with the unigram baseline."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from bittern.checkpoint.load import load_model_and_tokenizer, load_run_config, resolve_checkpoint
from bittern.config import Config
from bittern.data.loader import TokenDataset
from bittern.data.tokenizer import Tokenizer
from bittern.errors import BitternError
from bittern.eval.baseline import unigram_loss, unigram_text_nll
from bittern.eval.perplexity import evaluate, evaluate_text
from bittern.runtime import autocast, resolve_device, resolve_precision
from bittern.train.data import open_dataset


@dataclass
class Evaluation:
    """One row per run (run, quant, params, context, loss, perplexity, bits_per_byte, tokens),
    the unigram baseline's row, a line saying what text they were all scored on, and whether
    bits/byte counts that text's bytes exactly (a raw text) or from a split's mean bytes per token."""

    rows: list[dict]
    baseline: dict
    source: str
    exact_bytes: bool


def evaluate_runs(
    runs: list[str],
    data_path: str | None = None,
    max_batches: int = 0,
    device: str = "auto",
    text_path: str | None = None,
    context: int = 0,
) -> Evaluation:
    """Score every run on the same text: a raw `text_path` (each run with its own tokenizer, so
    runs with different tokenizers compare by bits/byte), else the validation split of
    `data_path` (default: the first run's data), which every run's tokenizer must match.

    `context` tokens per window (0: each run's train.seq_len). The baseline's unigram
    frequencies come from the train split of that same dataset.
    """
    dev = resolve_device(device)
    first_cfg = load_run_config(resolve_checkpoint(runs[0])[0])
    data = TokenDataset(Path(data_path)) if data_path else open_dataset(first_cfg.data, progress=False)
    text = read_text(Path(text_path)) if text_path else None
    rows = []
    for run in runs:
        cfg = load_run_config(resolve_checkpoint(run)[0])
        model, tokenizer = load_model_and_tokenizer(run, device=dev)
        window = run_context(cfg, model, context)
        amp = autocast(dev, resolve_precision(cfg.train.precision, dev))
        batch = cfg.train.micro_batch_size or 8
        if text is None:
            _check_tokenizer(data, tokenizer, run)
            result = evaluate(model, data, window, batch, max_batches or None, dev, amp)
        else:
            ids = tokenizer.encode(text)
            result = evaluate_text(model, ids, len(text.encode()), window, prefix_id(tokenizer), batch, amp)
        size = sum(p.numel() for p in model.parameters())
        rows.append({"run": str(run), "quant": cfg.model.quant, "params": size, "context": window, **result})
    if text is None:
        where = f"validation split of {data.path}" + (f", first {max_batches} batches" if max_batches else "")
    else:
        where = f"{text_path} ({len(text.encode())} bytes of UTF-8)"
    return Evaluation(rows, _baseline(data, text), where, exact_bytes=text is not None)


def read_text(path: Path) -> str:
    """A held-out UTF-8 text file as is (no newline translation: its bytes are what bits/byte counts)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BitternError(f"cannot read held-out text {path}: {e}") from None
    if not text:
        raise BitternError(f"held-out text {path} is empty")
    return text


def run_context(cfg: Config, model: nn.Module, context: int = 0) -> int:
    """Tokens per evaluation window: `context`, else the length the run was trained on."""
    limit = model.config.max_seq_len
    if not 0 <= context <= limit:
        raise BitternError(f"context {context} is not within 1..max_seq_len ({limit}) of the model")
    return context or min(cfg.train.seq_len, limit)


def prefix_id(tokenizer: Tokenizer) -> int:
    """The token a text is conditioned on: EOS, which precedes every document in training."""
    return tokenizer.eos_id if tokenizer.eos_id is not None else 0


def _check_tokenizer(data: TokenDataset, tokenizer: Tokenizer, run: str) -> None:
    try:
        data.check_tokenizer(tokenizer.identity())
    except BitternError as e:
        raise BitternError(f"{run}: {e}; to compare runs with different tokenizers use --text FILE") from None


def _baseline(data: TokenDataset, text: str | None) -> dict:
    """The unigram model's row, on the same text the runs were scored on."""
    if text is None:
        loss = unigram_loss(data)
        tokens = data.num_tokens("val")
        bits_per_byte = loss / math.log(2) / data.bytes_per_token("val")
    else:
        ids = data.tokenizer().encode(text)
        total = unigram_text_nll(data, ids)
        tokens, loss = len(ids), total / max(len(ids), 1)
        bits_per_byte = total / math.log(2) / len(text.encode())
    return {
        "run": f"unigram baseline ({data.path} train split)",
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "bits_per_byte": bits_per_byte,
        "tokens": tokens,
    }
