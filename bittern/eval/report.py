"""`bittern eval --report DIR`: a markdown table of the runs' scores plus loss and health figures."""

from __future__ import annotations

import re
from pathlib import Path

from bittern.checkpoint.load import load_run_config, resolve_checkpoint
from bittern.errors import BitternError
from bittern.eval.curves import Records, plot_health, plot_loss_curves
from bittern.eval.runs import Evaluation
from bittern.monitor.plot import load_records

HEADER = (
    "| run | quant | params | context | tokens | loss (nats/token) | perplexity | bits/byte |\n"
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def check_report_dir(path: Path) -> None:
    """Refuse a report folder that exists and is not empty (checked before any work is done)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise BitternError(f"report folder {path} exists and is not empty; choose another")


def write_report(evaluation: Evaluation, runs: list[str], out_dir: Path) -> Path:
    """Write out_dir/report.md and its PNGs; every input is read before anything is written."""
    out_dir = Path(out_dir)
    check_report_dir(out_dir)
    curves = _run_curves(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [_table(evaluation)]
    loss = plot_loss_curves({k: (r, t) for k, (r, t, _) in curves.items()}, out_dir / "loss_curves.png")
    if loss is not None:
        lines += ["## Loss curves", "", f"![loss curves]({loss.name})", ""]
    missing = [str(run) for run in runs if _label(run) not in curves]
    if missing:
        lines += [f"No metrics.jsonl (e.g. a converted checkpoint), so no curves: {', '.join(missing)}.", ""]
    health = []
    for i, (label, (records, tokens_per_step, quant)) in enumerate(curves.items()):
        name = f"health_{i}_{re.sub(r'[^A-Za-z0-9._-]+', '_', Path(label).name)}.png"
        if quant == "ternary" and (png := plot_health(label, records, tokens_per_step, out_dir / name)):
            health += [f"### {label}", "", f"![ternary health of {label}]({png.name})", ""]
    if health:
        lines += ["## Ternary health", "", "Means over layers, weighted by parameters.", ""]
        lines += health
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    return report


def _label(run: str) -> str:
    return str(run).rstrip("/") or str(run)


def _run_curves(runs: list[str]) -> dict[str, tuple[Records, int, str]]:
    """label -> (metrics records, tokens per step, model.quant) of each run that has metrics.jsonl."""
    out = {}
    for run in runs:
        ckpt, run_dir = resolve_checkpoint(run)
        if (run_dir / "metrics.jsonl").exists():
            cfg = load_run_config(ckpt)
            tokens_per_step = cfg.train.batch_size * cfg.train.seq_len
            out[_label(run)] = (load_records(run_dir / "metrics.jsonl"), tokens_per_step, cfg.model.quant)
    return out


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _row(r: dict) -> str:
    params = _count(r["params"]) if "params" in r else ""
    cells = [r["run"].replace("|", "\\|"), r.get("quant", ""), params, str(r.get("context", ""))]
    cells += [str(r["tokens"]), f"{r['loss']:.4f}", f"{r['perplexity']:.2f}", f"{r['bits_per_byte']:.4f}"]
    return "| " + " | ".join(cells) + " |"


def _table(evaluation: Evaluation) -> str:
    """The scores table with a note on what is comparable across tokenizers."""
    if evaluation.exact_bytes:
        note = (
            "Each run reads the text with its own tokenizer; every token is predicted once, the first "
            "after EOS, in windows of `context` tokens. Loss and perplexity are per token of that "
            "run's tokenizer, so they compare only between runs that share it; bits per byte "
            "(total nats / ln 2 / UTF-8 bytes of the text) does not depend on the tokenizer."
        )
    else:
        note = (
            "All runs share the dataset's tokenizer, so every column compares. Bits per byte uses the "
            "split's mean UTF-8 bytes per token; for runs with different tokenizers use `--text FILE`."
        )
    rows = "\n".join(_row(r) for r in [*evaluation.rows, evaluation.baseline])
    return f"# Evaluation\n\nScored on: {evaluation.source}.\n\n{HEADER}\n{rows}\n\n{note}\n"
