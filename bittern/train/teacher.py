"""The frozen teacher for distillation: a bittern run, or a HF folder / GGUF converted on the fly."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from bittern.checkpoint.load import load_model_and_tokenizer
from bittern.convert.hf import read_hf
from bittern.convert.source import is_bittern, source_model_config, source_tokenizer
from bittern.data.tokenizer import Tokenizer
from bittern.errors import BitternError
from bittern.models import ModelConfig, Transformer
from bittern.train.losses import TeacherOutput

GIB = 1 << 30


class Teacher:
    """A frozen model (eval, no gradients) that answers the student's batches under no_grad."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, source: str) -> None:
        self.model, self.tokenizer, self.source = model, tokenizer, source
        self.config: ModelConfig = model.config

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, hidden: bool = False) -> TeacherOutput:
        """Logits (and per-block hidden states if `hidden`) for `input_ids`, outside autograd."""
        if hidden:
            logits, hiddens = self.model(input_ids, return_hidden=True)
            return TeacherOutput(logits, hiddens)
        return TeacherOutput(self.model(input_ids))


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPU (half the memory, the teacher is not trained), fp32 on CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def weight_bytes(cfg: ModelConfig, dtype: torch.dtype) -> int:
    """Bytes of the model's parameters in `dtype` (tied tensors counted once), counted on the meta device."""
    with torch.device("meta"):
        model = Transformer(cfg)
    return sum(p.numel() for p in model.parameters()) * torch.empty((), dtype=dtype).element_size()


def free_bytes(device: torch.device) -> int:
    """Free memory on `device`: the GPU's per torch.cuda.mem_get_info, else the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        return kib * 1024
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(needed: int, device: torch.device, source: str, free: int | None = None) -> None:
    """Refuse a teacher whose weights would take more than 90% of the free memory on `device`."""
    free = free_bytes(device) if free is None else free
    if needed > 0.9 * free:
        raise BitternError(
            f"teacher {source} does not fit: its weights need {needed / GIB:.2f} GiB, "
            f"{free / GIB:.2f} GiB is free on {device}"
        )


def _vocab(tok: Tokenizer) -> dict[str, int] | None:
    backend = getattr(tok, "backend", None)
    return backend.get_vocab(with_added_tokens=True) if backend is not None else None


def check_same_tokenizer(teacher: Tokenizer, student: Tokenizer, source: str) -> None:
    """Distillation compares distributions id by id: identical tokenizers, or one shared vocabulary.

    The same vocabulary (token -> id) passes even when the serialized tokenizers differ, as the
    one transformers rebuilds from a GGUF file differs from the original tokenizer.json.
    """
    if teacher.identity() == student.identity():
        return
    vocab = _vocab(teacher)
    if vocab is None or vocab != _vocab(student):
        raise BitternError(
            f"tokenizer mismatch: teacher {source} ({teacher.kind}, {teacher.vocab_size} tokens) and the "
            f"student ({student.kind}, {student.vocab_size} tokens) have different vocabularies"
        )


def load_teacher(
    source: str | Path,
    device: torch.device | str,
    dtype: torch.dtype | None = None,
    student_tokenizer: Tokenizer | None = None,
) -> Teacher:
    """Load `source` frozen on `device`, checking its tokenizer against the student's and its size."""
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    path = Path(source)
    cfg = source_model_config(path)
    if not is_bittern(path):
        cfg = replace(cfg, quant="none")
    tokenizer = source_tokenizer(path)
    if student_tokenizer is not None:
        check_same_tokenizer(tokenizer, student_tokenizer, str(source))
    check_fits(weight_bytes(cfg, dtype), device, str(source))
    if is_bittern(path):
        model, _ = load_model_and_tokenizer(path)
    else:
        model = read_hf(path).build("none")
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return Teacher(model, tokenizer, str(source))
