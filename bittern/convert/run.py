"""`bittern convert`: a Hugging Face folder or GGUF file -> a bittern run folder at step 0.

The run folder holds config.toml, tokenizer/ and checkpoints/step_00000000, so `bittern.load`
reads it and `bittern train --init RUN` starts from it. Everything is checked and written
into a temporary sibling folder that is renamed into place at the end: a failure leaves nothing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bittern.checkpoint import holds_run, save_checkpoint
from bittern.config import Config, to_toml
from bittern.convert.hf import read_hf
from bittern.errors import BitternError


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BitternError(f"output path {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise BitternError(f"output folder {out} is not empty (pass --overwrite to replace a run)")
        if not holds_run(out):
            raise BitternError(f"output folder {out} holds no bittern run; refusing to delete it")


def convert_checkpoint(
    source: str | Path, out: str | Path, quant: str = "ternary", overwrite: bool = False
) -> Path:
    """Convert `source` into run folder `out` with model.quant = `quant`; return `out`."""
    source, out = Path(source), Path(out)
    if quant not in ("ternary", "none"):
        raise BitternError(f"--quant must be 'ternary' or 'none', got {quant!r}")
    _check_out(out, overwrite)
    hf = read_hf(source)
    model = hf.build(quant)
    cfg = Config()
    cfg.model = model.config
    cfg.data.tokenizer = str(out.resolve() / "tokenizer")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        (tmp / "config.toml").write_text(to_toml(cfg))
        hf.tokenizer.save(tmp / "tokenizer")
        state = {"step": 0, "tokens_seen": 0, "converted_from": str(source.resolve())}
        save_checkpoint(tmp, 0, model, state, to_toml(cfg))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
