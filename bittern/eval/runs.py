"""Evaluate several runs side by side on the same validation text."""

from __future__ import annotations

from pathlib import Path

from bittern.checkpoint.load import load_model_and_tokenizer, load_run_config, resolve_checkpoint
from bittern.data.loader import TokenDataset
from bittern.eval.perplexity import evaluate
from bittern.runtime import autocast, resolve_device, resolve_precision
from bittern.train.data import open_dataset


def evaluate_runs(
    runs: list[str], data_path: str | None = None, max_batches: int = 0, device: str = "auto"
) -> list[dict]:
    """One row per run: loss, perplexity, bits/byte on `data_path` (default: the first run's data)."""
    dev = resolve_device(device)
    first_cfg = load_run_config(resolve_checkpoint(runs[0])[0])
    data = TokenDataset(Path(data_path)) if data_path else open_dataset(first_cfg.data, progress=False)
    rows = []
    for run in runs:
        cfg = load_run_config(resolve_checkpoint(run)[0])
        model, tokenizer = load_model_and_tokenizer(run, device=dev)
        data.check_tokenizer(tokenizer.identity())
        ctx = autocast(dev, resolve_precision(cfg.train.precision, dev))
        result = evaluate(
            model, data, cfg.train.seq_len, cfg.train.micro_batch_size or 8, max_batches or None, dev, ctx
        )
        rows.append({"run": str(run), **result})
    return rows
