"""bittern's own packed checkpoint: ternary codes at 2 bits (or base 3, 1.6 bits) per weight.

A folder with model.safetensors, config.json and tokenizer/. For every quantized layer NAME it
stores `NAME.codes` (packed uint8, flat; the unpacked shape is in config.json) and `NAME.scale`
(float32 gamma, W = codes * gamma, the shape `ternarize` gives); every other tensor (embeddings,
head, norms, a BitLinear's inside-norm weight, biases) is stored as it is in float32.
`load_packed` runs it with TernaryLinear layers, so its outputs equal the trained model's.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bittern.data.tokenizer import Tokenizer, load_tokenizer
from bittern.errors import BitternError
from bittern.export.common import ExportResult, folder_bytes, frozen_model, load_run, staged_output
from bittern.export.pack import pack_2bit, pack_base3, unpack_2bit, unpack_base3
from bittern.models import ModelConfig, Transformer
from bittern.nn import bitlinear_layers
from bittern.nn.ternary_linear import TernaryLinear

FORMAT = "bittern-packed"
FORMAT_VERSION = 1
PACKINGS = {"2bit": (pack_2bit, unpack_2bit), "base3": (pack_base3, unpack_base3)}


def packed_tensors(model: Transformer, packing: str) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """The tensors of the packed file and the unpacked shape of each layer's codes."""
    pack = PACKINGS[packing][0]
    tensors, shapes = {}, {}
    latent = set()
    for name, layer in bitlinear_layers(model):
        frozen = TernaryLinear.from_bitlinear(layer)
        tensors[f"{name}.codes"] = pack(frozen.codes)
        tensors[f"{name}.scale"] = frozen.scale
        shapes[name] = list(frozen.codes.shape)
        latent.add(f"{name}.weight")
    for key, value in model.state_dict().items():
        if key in latent or (key == "lm_head.weight" and model.config.tie_embeddings):
            continue
        tensors[key] = value.float()
    return {k: v.contiguous() for k, v in tensors.items()}, shapes


def export_packed(run: str | Path, out: str | Path, base3: bool = False) -> ExportResult:
    """Write a run's latest checkpoint as a packed folder at `out` (which must not exist)."""
    model, tokenizer = load_run(run)
    if not bitlinear_layers(model):
        raise BitternError(f"{run} has no ternary layers to pack (model.quant is {model.config.quant!r})")
    packing = "base3" if base3 else "2bit"
    tensors, shapes = packed_tensors(model, packing)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "packing": packing,
        "scale_convention": "W = codes * scale (scale = gamma = mean|W|)",
        "code_shapes": shapes,
        "model": asdict(model.config),
    }
    with staged_output(out) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": FORMAT, "packing": packing})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        tokenizer.save(tmp / "tokenizer")
    n_ternary = sum(m.weight.numel() for _, m in bitlinear_layers(model))
    total = sum(p.numel() for p in model.parameters())
    return ExportResult(Path(out), n_ternary, total, folder_bytes(Path(out)))


def _read_config(path: Path) -> dict:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BitternError(f"cannot read {path / 'config.json'}: {e}") from None
    if config.get("format") != FORMAT or config.get("packing") not in PACKINGS:
        raise BitternError(f"{path} is not a bittern packed export")
    return config


def load_packed(path: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, Tokenizer]:
    """Rebuild a packed export as a Transformer whose ternary layers are TernaryLinear."""
    path = Path(path)
    config = _read_config(path)
    unpack = PACKINGS[config["packing"]][1]
    state = load_file(str(path / "model.safetensors"))
    for name, shape in config["code_shapes"].items():
        state[f"{name}.codes"] = unpack(state.pop(f"{name}.codes"), shape)
    model = frozen_model(ModelConfig(**config["model"]), state, str(path))
    return model.to(device).eval(), load_tokenizer(path / "tokenizer")
