"""Read a Hugging Face causal LM (local folder or .gguf file) into a bittern Transformer.

transformers does the reading (safetensors, sharded or .bin folders; GGUF dequantized
through `gguf`); this module maps config and tensor names and checks that nothing is lost.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from bittern.convert.hf_config import model_config_from_hf
from bittern.convert.weights import copy_weights, quantizer_norm
from bittern.data.tokenizer import HFTokenizer, Tokenizer
from bittern.errors import BitternError
from bittern.models import ModelConfig, Transformer, build_model


@dataclass
class HFSource:
    """A checkpoint in bittern's terms: its model config, its tensors by bittern name, its tokenizer."""

    path: Path
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: Tokenizer

    def build(self, quant: str = "none") -> Transformer:
        """A bittern model (quant none: nn.Linear; ternary: BitLinear) holding these weights."""
        model = build_model(replace(self.config, quant=quant))
        copy_weights(model, self.state_dict, str(self.path), absent_ok(self.config))
        return model


def is_gguf(path: Path) -> bool:
    """A .gguf file name (checked before anything is read)."""
    return Path(path).suffix == ".gguf"


def _where(path: Path) -> tuple[str, dict]:
    """(folder, from_pretrained kwargs) for a Hugging Face folder or a .gguf file."""
    path = Path(path)
    if is_gguf(path):
        if not path.is_file():
            raise BitternError(f"GGUF file not found: {path}")
        return str(path.parent), {"gguf_file": path.name}
    if not path.is_dir():
        raise BitternError(f"not a Hugging Face folder or .gguf file: {path}")
    if not (path / "config.json").is_file():
        raise BitternError(f"no config.json in {path}: not a Hugging Face checkpoint folder")
    return str(path), {"local_files_only": True}


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def load_hf_config(path: Path):
    """The transformers config of a folder or .gguf file (no weights read)."""
    from transformers import AutoConfig

    folder, kwargs = _where(path)
    try:
        return AutoConfig.from_pretrained(folder, **kwargs)
    except ImportError as e:
        raise BitternError(
            f"reading {path} needs gguf and accelerate: pip install gguf accelerate ({e})"
        ) from e
    except Exception as e:  # transformers raises ValueError/OSError/KeyError for unreadable configs
        raise BitternError(f"cannot read the model config of {path}: {_first_line(e)}") from e


@contextlib.contextmanager
def _quiet_transformers():
    """Errors only from transformers' logger while loading: bittern reports problems itself."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def load_hf_state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in float32, by transformers name; missing tensors refused."""
    from transformers import AutoModelForCausalLM

    folder, kwargs = _where(path)
    try:
        with _quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch.float32, output_loading_info=True, **kwargs
            )
    except ImportError as e:
        raise BitternError(
            f"reading {path} needs gguf and accelerate: pip install gguf accelerate ({e})"
        ) from e
    except Exception as e:
        raise BitternError(f"cannot load the weights of {path}: {_first_line(e)}") from e
    missing = sorted(info.get("missing_keys", ()))
    if missing:
        more = " ..." if len(missing) > 3 else ""
        raise BitternError(f"{path} lacks tensors the model needs: {missing[:3]}{more}")
    return {k: v.detach() for k, v in model.state_dict().items()}


def to_bittern_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' Llama names less the `model.` prefix are bittern's names."""
    return {k.removeprefix("model."): v for k, v in state.items()}


def absent_ok(cfg: ModelConfig):
    """Quantizer norms, and with bias on, the biases the source architecture lacks (zero: no bias)."""
    return lambda name: quantizer_norm(name) or (cfg.bias and name.endswith("_proj.bias"))


def read_hf(path: Path) -> HFSource:
    """Read config, tokenizer and weights of a Hugging Face folder or .gguf file."""
    path = Path(path)
    hf_cfg = load_hf_config(path)
    cfg = model_config_from_hf(hf_cfg, quant="none")
    tokenizer = HFTokenizer.from_path(path)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise BitternError(
            f"tokenizer of {path} has {tokenizer.vocab_size} tokens, more than the model's {cfg.vocab_size}"
        )
    return HFSource(path, cfg, to_bittern_names(load_hf_state(path)), tokenizer)
