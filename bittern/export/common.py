"""What every exporter shares: loading the run, finding ternary layers, writing the output atomically."""

from __future__ import annotations

import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from bittern.checkpoint.store import follow_umask
from bittern.convert.weights import copy_weights
from bittern.data.tokenizer import Tokenizer
from bittern.errors import BitternError
from bittern.models import ModelConfig, Transformer, build_model
from bittern.nn import bitlinear_layers
from bittern.nn.ternary_linear import TernaryLinear


@dataclass
class ExportResult:
    """Where an export went and how many bits each quantized weight costs in it."""

    path: Path
    quantized_params: int
    total_params: int
    bytes: int
    note: str = ""  # what else a user should know about the file (e.g. which types it holds)

    @property
    def bits_per_param(self) -> float:
        """File bytes * 8 over every parameter of the model (embeddings and head included)."""
        return 8 * self.bytes / max(1, self.total_params)

    def summary(self) -> str:
        return (
            f"{self.path}: {self.bytes / 2**20:.2f} MiB, {self.total_params:,} parameters "
            f"({self.quantized_params:,} ternary), {self.bits_per_param:.2f} bits/parameter"
            + (f"; {self.note}" if self.note else "")
        )


def load_run(run: str | Path) -> tuple[Transformer, Tokenizer]:
    """bittern.load on CPU in float32, checking it is a bittern Transformer."""
    import bittern

    model, tokenizer = bittern.load(run, device="cpu")
    if not isinstance(model, Transformer):
        raise BitternError(f"{run} does not hold a bittern Transformer")
    return model.float(), tokenizer


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


@contextmanager
def staged_output(out: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `out`, renamed to `out` only if the block succeeds."""
    out = Path(out)
    if out.exists():
        raise BitternError(f"output path already exists: {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging_name(out)
    tmp.mkdir()
    try:
        yield tmp
        follow_umask(tmp)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextmanager
def staged_file(out: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside `out`, renamed to `out` only if the block succeeds."""
    out = Path(out)
    if out.exists():
        raise BitternError(f"output path already exists: {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging_name(out)
    tmp.touch(exist_ok=False)
    mode = stat.S_IMODE(tmp.stat().st_mode)  # the umask's, kept should the writer replace the file
    try:
        yield tmp
        tmp.chmod(mode)
        tmp.rename(out)
    finally:
        tmp.unlink(missing_ok=True)


def _staging_name(out: Path) -> Path:
    """An unused hidden name beside `out`.

    Made with plain mkdir / touch, so the export gets the umask's permissions, as any file
    the user writes; tempfile's mkdtemp / mkstemp would leave it private (0700 / 0600).
    """
    return out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.tmp"


def frozen_model(cfg: ModelConfig, state: dict[str, torch.Tensor], where: str) -> Transformer:
    """A Transformer whose BitLinears are TernaryLinear (scales shaped as stored), filled from `state`.

    `state` uses bittern's names with `<layer>.codes` / `<layer>.scale` for each ternary layer;
    unknown, missing or misshapen tensors and codes outside {-1, 0, 1} raise BitternError.
    """
    model = build_model(cfg)
    for name, layer in bitlinear_layers(model):
        codes = state.get(f"{name}.codes")
        if codes is not None and not torch.isin(codes, torch.tensor([-1, 0, 1], dtype=codes.dtype)).all():
            raise BitternError(f"{where}: the weights of {name} are not ternary codes in {{-1, 0, 1}}")
        scale = state.get(f"{name}.scale")
        shape = () if scale is None or scale.numel() == 1 else tuple(scale.shape)
        bias, norm, eps = layer.bias is not None, layer.norm is not None, layer.options.norm_eps
        frozen = TernaryLinear(layer.in_features, layer.out_features, shape, bias, norm, eps)
        model.set_submodule(name, frozen)
    state = {k: v.reshape(()) if k.endswith(".scale") and v.numel() == 1 else v for k, v in state.items()}
    copy_weights(model, state, where, may_be_absent=lambda name: False)
    return model
