"""Load any model bittern writes back into a bittern Transformer: runs, checkpoints and every export.

Runs and checkpoints go through `bittern.load`, packed folders through `load_packed`. Hugging Face
folders and GGUF files are read with bittern's own code (safetensors / the `gguf` package, no
bittern-specific transformers classes): their ternary projections become TernaryLinear layers
holding the stored codes and scale, so the model computes what the trained run computed.
Scales: HF stores 1 / gamma (inverted back here, within float32 rounding); GGUF stores gamma, its
codes in TQ2_0 / TQ1_0 or, for rows that are not whole TQ blocks, F16.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from bittern.data.tokenizer import HFTokenizer, Tokenizer
from bittern.errors import BitternError
from bittern.export.common import frozen_model
from bittern.models import ModelConfig, Transformer

KINDS = {
    "run": "run",
    "checkpoint": "checkpoint",
    "packed": "packed export",
    "hf": "Hugging Face export",
    "gguf": "GGUF export",
}
GGUF_MAGIC = b"GGUF"
# llama.cpp pre-tokenizer names gguf_export has written: "default" (no regex split, byte vocabulary
# only) and GPT-2's split regex under the names "gpt-2" and "trillion".
GGUF_PRE_TOKENIZERS = ("default", "gpt-2", "trillion")


def detect_kind(path: Path) -> str:
    """Which of KINDS' keys `path` is, from its files' names and headers; BitternError for anything else."""
    if not path.exists():
        raise BitternError(f"no such run, checkpoint, export or .gguf file: {path}")
    if path.is_file():
        with open(path, "rb") as f:
            if path.suffix == ".gguf" or f.read(4) == GGUF_MAGIC:
                return "gguf"
        raise BitternError(f"{path} is a file but not a .gguf export")
    if (path / "manifest.json").is_file():
        return "checkpoint"
    if (path / "checkpoints").is_dir():
        return "run"
    if (path / "config.json").is_file():
        from bittern.export.packed import FORMAT

        config = _read_json(path / "config.json")
        if config.get("format") == FORMAT:
            return "packed"
        if "model_type" in config:
            return "hf"
    raise BitternError(f"{path} is not a run, checkpoint, packed export, Hugging Face export or .gguf file")


def load_any(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Tokenizer]:
    """(model in eval mode on `device`, tokenizer) from a run, checkpoint, packed / HF folder or .gguf."""
    import bittern
    from bittern.export.packed import load_packed

    path = Path(path).expanduser()
    kind = detect_kind(path)
    loaders = {
        "run": bittern.load,
        "checkpoint": bittern.load,
        "packed": load_packed,
        "hf": load_hf_export,
        "gguf": load_gguf_export,
    }
    try:
        model, tokenizer = loaders[kind](path, device=device)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:  # corrupt or truncated files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BitternError(f"cannot load {KINDS[kind]} {path}: {first}") from None
    return model.to(device).eval(), tokenizer


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BitternError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise BitternError(f"{path} does not hold a JSON object")
    return data


def sized_to_tokenizer(cfg: ModelConfig, tokenizer: Tokenizer, where: Path) -> ModelConfig:
    """`cfg` (vocab_size: the stored table's rows) with the tokenizer's vocabulary padded to those rows.

    Sampling then ranges over the tokenizer's ids only, as it did for the trained run.
    """
    rows = cfg.padded_vocab_size
    if tokenizer.vocab_size > rows:
        raise BitternError(f"{where}: the tokenizer has {tokenizer.vocab_size} tokens, the model {rows}")
    return replace(cfg, vocab_size=tokenizer.vocab_size, vocab_multiple=rows)


# Hugging Face export (bittern/export/hf.py): LlamaForCausalLM + `bitnet` quantization, or BitNet.


def hf_model_config(config: dict) -> ModelConfig:
    """The bittern ModelConfig of a config.json written by `bittern export --format hf`."""
    from bittern.export.hf import HIDDEN_ACT

    kind, act = config.get("model_type"), config.get("hidden_act", "silu")
    quant = config.get("quantization_config") or {}
    arch = {v: k for k, v in HIDDEN_ACT.items()}.get(act)
    if kind not in ("llama", "bitnet") or arch is None:
        raise BitternError(f"model_type {kind!r} with hidden_act {act!r} is not a bittern export")
    if quant and quant.get("quant_method") != "bitnet":
        raise BitternError(f"quantization {quant.get('quant_method')!r} is not bittern's ternary 'bitnet'")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise BitternError(f"RoPE scaling {rope} is not supported (only plain RoPE)")
    inside = "inside" if quant.get("use_rms_norm") else "none"
    keep = [m.removeprefix("model.") for m in quant.get("modules_to_not_convert", []) if m != "lm_head"]
    dim, heads = config["hidden_size"], config["num_attention_heads"]
    if config.get("head_dim", dim // heads) * heads != dim:
        raise BitternError(f"head_dim {config['head_dim']} x {heads} heads != hidden size {dim}")
    return ModelConfig(
        arch=arch,
        quant="ternary" if quant else "none",
        vocab_size=config["vocab_size"],
        vocab_multiple=1,
        dim=dim,
        n_layers=config["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=config.get("num_key_value_heads") or heads,
        ffn_dim=config["intermediate_size"],
        max_seq_len=config["max_position_embeddings"],
        rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        norm_eps=float(config["rms_norm_eps"]),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        bias=bool(config.get("attention_bias") or config.get("mlp_bias")),
        norm_placement="sublayer" if kind == "bitnet" else inside,
        full_precision=keep,
    ).resolved()


def unpack_hf_rows(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of transformers' pack_weights (rows a multiple of 4, as bittern's export requires):
    row r of block i sits at bits 2i of packed row r; stored value 3 comes out as 2, not a code."""
    return torch.cat([(packed >> (2 * i)) & 3 for i in range(4)]).to(torch.int8) - 1


def hf_to_bittern(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers names and layouts -> bittern's; packed weights -> codes, weight_scale -> gamma."""
    out = {}
    for key, value in tensors.items():
        name = key.removeprefix("model.")
        layer = name.removesuffix(".weight")
        if f"{key}_scale" in tensors:  # a ternary layer: packed weight plus 1 / gamma
            out[f"{layer}.codes"] = unpack_hf_rows(value)
        elif name.endswith(".weight_scale"):
            out[name.replace(".weight_scale", ".scale")] = (1.0 / value.double()).float()
        else:
            out[name.replace(".rms_norm.weight", ".norm.weight")] = value.float()
    return out


def load_hf_export(path: Path, device: str | torch.device = "cpu") -> tuple[Transformer, Tokenizer]:
    """A folder from `bittern export --format hf` as a bittern Transformer and its tokenizer."""
    path = Path(path)
    where, config = path / "config.json", _read_json(path / "config.json")
    try:
        cfg = hf_model_config(config)
    except (KeyError, TypeError, ValueError) as e:
        raise BitternError(f"{where}: missing or malformed field {e}") from None
    except BitternError as e:  # say which file cannot be represented
        raise BitternError(f"{where}: {e}") from None
    for name in ("model.safetensors", "tokenizer.json"):
        if not (path / name).is_file():
            raise BitternError(f"{path} has no {name} (bittern's HF export writes one)")
    tokenizer = HFTokenizer.from_path(path)
    cfg = sized_to_tokenizer(cfg, tokenizer, path)
    state = hf_to_bittern(load_file(str(path / "model.safetensors")))
    return frozen_model(cfg, state, str(path)).to(device).eval(), tokenizer


# GGUF export (bittern/export/gguf_export.py): llama.cpp's `bitnet` arch, TQ codes plus `.scale`.


def _gguf_field(reader, key: str, default=None):
    field = reader.get_field(key)
    return default if field is None else field.contents()


def _gguf_required(reader, key: str, where: Path):
    value = _gguf_field(reader, key)
    if value is None:
        raise BitternError(f"{where} lacks GGUF metadata {key!r}")
    return value


def gguf_tokenizer(reader, where: Path) -> HFTokenizer:
    """GPT-2 style byte-level BPE from tokenizer.ggml.* metadata; trailing UNUSED pad tokens dropped."""
    import gguf
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers

    kind = _gguf_field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise BitternError(
            f"{where}: tokenizer.ggml.model {kind!r} is not supported (gpt2 byte-level BPE is)"
        )
    pre = _gguf_field(reader, "tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE_TOKENIZERS:
        raise BitternError(f"{where}: tokenizer.ggml.pre {pre!r} is not supported ({GGUF_PRE_TOKENIZERS})")
    tokens = _gguf_required(reader, "tokenizer.ggml.tokens", where)
    types = _gguf_field(reader, "tokenizer.ggml.token_type", [gguf.TokenType.NORMAL] * len(tokens))
    used = [i for i, t in enumerate(types) if t != gguf.TokenType.UNUSED]
    vocab = {tokens[i]: i for i in range(used[-1] + 1 if used else 0)}
    pairs = [m.split(" ") for m in _gguf_field(reader, "tokenizer.ggml.merges", [])]
    # Merges whose parts or result are no tokens can never apply (gguf_export writes one such
    # "inert" merge for merge-less vocabularies); `tokenizers` would panic on them.
    merges = [(p[0], p[1]) for p in pairs if len(p) == 2 and {p[0], p[1], "".join(p)} <= vocab.keys()]
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre != "default")
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([t for t, i in vocab.items() if types[i] == gguf.TokenType.CONTROL])
    eos = _gguf_field(reader, "tokenizer.ggml.eos_token_id")
    return HFTokenizer(backend, tokens[eos] if eos is not None and eos < len(vocab) else None)


def _float32_field(value) -> float:
    """A GGUF float32 field as the shortest decimal it stores: 1e-5 comes back as 9.9999997e-06,
    and the run's model, normalizing with 1e-5, would round some int8 activations differently."""
    return float(str(np.float32(value)))


def gguf_model_config(reader, where: Path) -> ModelConfig:
    """bittern's ModelConfig for llama.cpp's bitnet graph (see gguf_export's docstring) from metadata."""
    from bittern.export.gguf_export import ARCH

    arch = _gguf_field(reader, "general.architecture")
    if arch != ARCH:
        raise BitternError(
            f"{where}: GGUF architecture {arch!r} is not bittern's ternary export ({ARCH!r}); "
            "`bittern convert` imports other GGUF models"
        )

    def hp(key: str):
        return _gguf_required(reader, f"{ARCH}.{key}", where)

    dim, heads = int(hp("embedding_length")), int(hp("attention.head_count"))
    if int(hp("rope.dimension_count")) * heads != dim:
        raise BitternError(f"{where}: rope dimension x {heads} heads != embedding length {dim}")
    return ModelConfig(
        arch="llama",
        quant="ternary",
        vocab_size=int(hp("vocab_size")),
        vocab_multiple=1,
        dim=dim,
        n_layers=int(hp("block_count")),
        n_heads=heads,
        n_kv_heads=int(hp("attention.head_count_kv")),
        ffn_dim=int(hp("feed_forward_length")),
        max_seq_len=int(hp("context_length")),
        rope_theta=_float32_field(hp("rope.freq_base")),
        norm_eps=_float32_field(hp("attention.layer_norm_rms_epsilon")),
        tie_embeddings=True,
        norm_placement="sublayer",
    ).resolved()


def gguf_to_bittern(reader) -> dict[str, torch.Tensor]:
    """llama.cpp names -> bittern's: each projection (a weight with a `.scale` beside it) -> codes,
    dequantized from TQ (block scale 1) or read from F16 as they are; `.scale` -> gamma."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    from bittern.export.gguf_export import TENSOR_NAMES

    ours = {"token_embd": "embed_tokens", "output_norm": "norm"}
    ours |= {
        theirs.removesuffix(".weight"): mine.removesuffix(".weight") for mine, theirs in TENSOR_NAMES.items()
    }
    names = {t.name for t in reader.tensors}
    out = {}
    for t in reader.tensors:
        stem, leaf = t.name.rsplit(".", 1)
        block, _, local = stem.rpartition(".")
        local = ours.get(local, local)
        if block.startswith("blk."):
            local = f"layers.{block[4:]}.{local}"
        data = np.array(t.data)
        if t.tensor_type in (GGMLQuantizationType.TQ1_0, GGMLQuantizationType.TQ2_0):
            out[f"{local}.codes"] = torch.from_numpy(dequantize(data, t.tensor_type))
        elif leaf == "weight" and f"{stem}.scale" in names:  # codes that rows of TQ blocks cannot hold
            out[f"{local}.codes"] = torch.from_numpy(data.astype(np.float32))
        else:
            out[f"{local}.{leaf}"] = torch.from_numpy(data).float()
    return out


def load_gguf_export(path: Path, device: str | torch.device = "cpu") -> tuple[Transformer, Tokenizer]:
    """A file from `bittern export --format gguf` as a bittern Transformer and its tokenizer."""
    try:
        import gguf
    except ImportError:
        raise BitternError("reading GGUF needs the gguf package: pip install 'bittern[hf]'") from None
    path = Path(path)
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the reader raises several types for malformed files
        raise BitternError(f"cannot read GGUF file {path}: {e}") from None
    cfg = gguf_model_config(reader, path)
    tokenizer = gguf_tokenizer(reader, path)
    cfg = sized_to_tokenizer(cfg, tokenizer, path)
    return frozen_model(cfg, gguf_to_bittern(reader), str(path)).to(device).eval(), tokenizer
