"""bittern.load(): a run folder or checkpoint folder -> (model in eval mode, tokenizer)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import torch
from torch import nn

from bittern.checkpoint.sharded import load_model_weights
from bittern.checkpoint.store import CONFIG_FILE, latest_checkpoint, verify_checkpoint
from bittern.config import Config, config_from_dict
from bittern.data.tokenizer import Tokenizer, load_tokenizer
from bittern.errors import BitternError
from bittern.models import build_model


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(checkpoint folder, run folder) for a run folder or a checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise BitternError(f"no such run or checkpoint: {path}")
    if (path / CONFIG_FILE).exists() and (path / "manifest.json").exists():
        return path, path.parent.parent
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise BitternError(f"{path} holds no committed checkpoint")
    return ckpt, path


def load_run_config(ckpt: Path) -> Config:
    try:
        return config_from_dict(tomllib.loads((ckpt / CONFIG_FILE).read_text()))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise BitternError(f"cannot read {ckpt / CONFIG_FILE}: {e}") from None


def load_model_and_tokenizer(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Tokenizer]:
    """Rebuild the model a checkpoint was trained with, load its verified weights."""
    ckpt, run = resolve_checkpoint(path)
    verify_checkpoint(ckpt)
    cfg = load_run_config(ckpt)
    model = build_model(cfg.model)
    load_model_weights(ckpt, model)
    model.to(device).eval()
    tok_dir = run / "tokenizer"
    if not tok_dir.is_dir():
        raise BitternError(f"run {run} has no tokenizer/ folder")
    return model, load_tokenizer(tok_dir)
