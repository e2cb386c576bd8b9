"""Hugging Face export: a folder transformers loads with `AutoModelForCausalLM` and no bittern.

Mapping: sub-layer norms -> BitNetForCausalLM (model_type "bitnet"); the norm inside each
BitLinear, or none -> LlamaForCausalLM with the `bitnet` quantization config and `use_rms_norm`
(transformers' BitLinear has a LlamaRMSNorm with a learnable weight at `<proj>.rms_norm.weight`).
The FFN activation follows the arch: "llama" -> hidden_act "silu", "bitnet" -> "relu2" (both
classes gate with ACT2FN[hidden_act]). Both use transformers' offline "bitlinear" layer:
weights packed 4 per byte in its row-block layout, activations quantized per token exactly as
bittern does, y = (x_q @ codes^T) / (s_x * weight_scale).

Scale convention: transformers DIVIDES by `weight_scale`, so it is the inverse of bittern's
gamma: weight_scale = 1 / gamma (W = codes / weight_scale), one float32 per layer.
Anything transformers would compute differently is refused (every reason in one error), never
approximated.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from bittern.errors import BitternError
from bittern.export.common import ExportResult, folder_bytes, load_run, staged_output
from bittern.export.hf_tokenizer import save_hf_tokenizer
from bittern.models import ModelConfig, Transformer
from bittern.nn import bitlinear_layers
from bittern.nn.ternary_linear import TernaryLinear

HIDDEN_ACT = {"llama": "silu", "bitnet": "relu2"}


def unmet_requirements(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(what transformers cannot hold, the setting that fixes it) for each of `cfg`'s obstacles."""
    unmet = []
    ternary = cfg.quant == "ternary"
    if ternary and cfg.weight_granularity != "tensor":
        unmet.append(
            (
                f"model.weight_granularity is {cfg.weight_granularity!r} (transformers' BitLinear "
                "holds one scale per layer)",
                "--model.weight_granularity=tensor",
            )
        )
    if cfg.bias and cfg.norm_placement == "sublayer":
        unmet.append(("model.bias is true (BitNetForCausalLM has no MLP biases)", "--model.bias=false"))
    odd = [n for n in ("dim", "ffn_dim") if getattr(cfg, n) % 4] + (
        ["n_kv_heads*head_dim"] if (cfg.n_kv_heads * cfg.head_dim) % 4 else []
    )
    if ternary and odd:
        unmet.append(
            (
                f"{', '.join(odd)} not a multiple of 4 (transformers packs 4 output rows per byte)",
                "sizes that are multiples of 4",
            )
        )
    return unmet


def check_exportable(cfg: ModelConfig) -> None:
    """Raise one BitternError listing everything transformers' BitNet / Llama classes would compute
    differently, with the settings that fix it."""
    unmet = unmet_requirements(cfg)
    if unmet:
        raise BitternError(
            f"hf export: transformers cannot compute this model: {'; '.join(u for u, _ in unmet)}; "
            f"train with {' '.join(f for _, f in unmet)}"
        )


def hf_config(cfg: ModelConfig, eos_id: int | None, quantized: list[str]):
    """The transformers config object (LlamaConfig or BitNetConfig) for a bittern ModelConfig."""
    from transformers import BitNetConfig, LlamaConfig

    common = dict(
        vocab_size=cfg.padded_vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=cfg.bias,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=None,
    )
    if cfg.norm_placement == "sublayer":
        config = BitNetConfig(hidden_act=HIDDEN_ACT[cfg.arch], **common)
    else:
        config = LlamaConfig(hidden_act=HIDDEN_ACT[cfg.arch], mlp_bias=cfg.bias, **common)
    config.dtype = "float32"
    if quantized:
        all_linear = {f"layers.{i}.{m}" for i in range(cfg.n_layers) for m in _PROJ}
        config.quantization_config = {
            "quant_method": "bitnet",
            "linear_class": "bitlinear",
            "quantization_mode": "offline",
            "use_rms_norm": cfg.norm_placement == "inside",
            "rms_norm_eps": cfg.norm_eps,
            "modules_to_not_convert": ["lm_head"] + sorted(f"model.{n}" for n in all_linear - set(quantized)),
        }
    return config


_PROJ = [f"self_attn.{p}_proj" for p in "qkvo"] + [f"mlp.{p}_proj" for p in ("gate", "up", "down")]


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """transformers' tensor names and layouts: packed uint8 weights, weight_scale = 1 / gamma."""
    from transformers.integrations.bitnet import pack_weights

    out: dict[str, torch.Tensor] = {}
    ternary = dict(bitlinear_layers(model))
    for key, value in model.state_dict().items():
        if key == "lm_head.weight" and model.config.tie_embeddings:
            continue
        name = key if key.startswith("lm_head") else f"model.{key}"
        module, _, leaf = key.rpartition(".")
        if module in ternary and leaf == "weight":
            frozen = TernaryLinear.from_bitlinear(ternary[module])
            out[name] = pack_weights(frozen.codes.clone())
            out[name.removesuffix("weight") + "weight_scale"] = (1.0 / frozen.scale).reshape(1)
        elif module.endswith(".norm") and module.removesuffix(".norm") in ternary:
            out[name.replace(".norm.weight", ".rms_norm.weight")] = value.float()
        else:
            out[name] = value.float()
    return {k: v.contiguous() for k, v in out.items()}


def export_hf(run: str | Path, out: Path) -> ExportResult:
    """Write `run` as a transformers folder (config.json, model.safetensors, tokenizer) at `out`."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise BitternError("hf export needs transformers: pip install 'bittern[hf]'") from None
    model, tokenizer = load_run(run)
    cfg = model.config
    check_exportable(cfg)
    quantized = [n for n, _ in bitlinear_layers(model)]
    config = hf_config(cfg, tokenizer.eos_id, quantized)
    tensors = hf_state_dict(model)
    with staged_output(out) as tmp:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        save_hf_tokenizer(tokenizer, tmp)
    total = sum(p.numel() for p in model.parameters())
    return ExportResult(
        out, sum(m.weight.numel() for _, m in bitlinear_layers(model)), total, folder_bytes(out)
    )
