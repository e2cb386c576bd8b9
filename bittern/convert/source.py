"""A model source for --init and the teacher: a bittern run (or checkpoint) folder, a HF folder or a .gguf."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from bittern.checkpoint.load import load_run_config, resolve_checkpoint
from bittern.checkpoint.store import MODEL_FILE, verify_checkpoint
from bittern.convert.hf import absent_ok, is_gguf, load_hf_config, read_hf
from bittern.convert.hf_config import model_config_from_hf
from bittern.convert.weights import quantizer_norm
from bittern.data.tokenizer import HFTokenizer, Tokenizer, load_tokenizer
from bittern.errors import BitternError
from bittern.models import ModelConfig


def is_bittern(path: Path) -> bool:
    """A run folder (checkpoints/) or a checkpoint folder (manifest.json), not a HF folder."""
    path = Path(path)
    return (path / "checkpoints").is_dir() or (path / "manifest.json").is_file()


def _check_exists(path: Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise BitternError(f"model source not found: {path}")
    if not (is_gguf(path) or path.is_dir()):
        raise BitternError(
            f"model source must be a run folder, a Hugging Face folder or a .gguf file: {path}"
        )
    return path


@dataclass
class SourceWeights:
    """Tensors by bittern name, and which model tensors may be absent from them."""

    state_dict: dict[str, torch.Tensor]
    may_be_absent: Callable[[str], bool]
    where: str


def source_model_config(source: str | Path) -> ModelConfig:
    """The source's resolved ModelConfig, without reading its weights."""
    path = _check_exists(Path(source))
    if is_bittern(path):
        return load_run_config(resolve_checkpoint(path)[0]).model.resolved()
    return model_config_from_hf(load_hf_config(path), quant="none")


def source_tokenizer(source: str | Path) -> Tokenizer:
    """The tokenizer the source was trained with."""
    path = _check_exists(Path(source))
    if is_bittern(path):
        run = resolve_checkpoint(path)[1]
        return load_tokenizer(run / "tokenizer")
    return HFTokenizer.from_path(path)


def source_weights(source: str | Path) -> SourceWeights:
    """The source's tensors: a run's newest verified checkpoint, or what transformers reads."""
    path = _check_exists(Path(source))
    if is_bittern(path):
        ckpt, _ = resolve_checkpoint(path)
        verify_checkpoint(ckpt)
        try:
            state = load_file(str(ckpt / MODEL_FILE))
        except Exception as e:  # safetensors raises several types for malformed files
            raise BitternError(f"cannot read weights {ckpt / MODEL_FILE}: {e}") from None
        return SourceWeights(state, quantizer_norm, str(ckpt))
    hf = read_hf(path)
    return SourceWeights(hf.state_dict, absent_ok(hf.config), str(path))
