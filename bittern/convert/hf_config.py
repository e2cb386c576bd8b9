"""Map a Hugging Face causal-LM config onto bittern's ModelConfig, refusing what it cannot represent."""

from __future__ import annotations

from typing import Any

from bittern.errors import BitternError
from bittern.models.config import ModelConfig

# SmolLM / SmolLM2 are model_type "llama"; Mistral and Qwen2 differ only in details handled here.
SUPPORTED_TYPES = ("llama", "mistral", "qwen2")


def _rope(hf: Any) -> float:
    """RoPE theta; any scaling type (linear, dynamic, yarn, llama3, ...) is refused."""
    params = getattr(hf, "rope_parameters", None)  # transformers >= 5
    if isinstance(params, dict) and params and "rope_type" not in params and "rope_theta" not in params:
        kinds = {repr(sorted(v.items())) for v in params.values() if isinstance(v, dict)}
        if len(kinds) != 1:
            raise BitternError(f"per-layer RoPE parameters are not supported: {params}")
        params = next(v for v in params.values() if isinstance(v, dict))
    if isinstance(params, dict) and params:
        kind, theta = params.get("rope_type", "default"), params.get("rope_theta")
        partial = params.get("partial_rotary_factor", 1.0)
    else:  # transformers 4.x: rope_theta plus an optional rope_scaling dict
        scaling = getattr(hf, "rope_scaling", None) or {}
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        theta, partial = getattr(hf, "rope_theta", None), getattr(hf, "partial_rotary_factor", 1.0)
    if kind != "default":
        raise BitternError(f"RoPE scaling type {kind!r} is not supported (only plain RoPE)")
    if partial not in (None, 1.0):
        raise BitternError(f"partial rotary embeddings (factor {partial}) are not supported")
    if theta is None:
        raise BitternError("the checkpoint's config has no rope_theta")
    return float(theta)


def _max_seq_len(hf: Any) -> int:
    """max_position_embeddings, capped at the sliding window where one is used (exact below it)."""
    n = int(hf.max_position_embeddings)
    window = getattr(hf, "sliding_window", None)
    layer_types = getattr(hf, "layer_types", None)
    sliding = window is not None and (layer_types is None or "sliding_attention" in layer_types)
    if hf.model_type == "qwen2" and not getattr(hf, "use_sliding_window", False):
        sliding = False
    return min(n, int(window)) if sliding else n


def _has_bias(hf: Any) -> bool:
    """Qwen2 has q/k/v biases only; Llama's attention_bias / mlp_bias cover their projections."""
    return hf.model_type == "qwen2" or bool(
        getattr(hf, "attention_bias", False) or getattr(hf, "mlp_bias", False)
    )


def model_config_from_hf(hf: Any, quant: str = "ternary") -> ModelConfig:
    """The resolved ModelConfig of a transformers config (vocab_multiple 1: logits keep their width)."""
    kind = getattr(hf, "model_type", None)
    if kind not in SUPPORTED_TYPES:
        archs = ",".join(getattr(hf, "architectures", None) or []) or "?"
        raise BitternError(
            f"unsupported architecture {kind!r} ({archs}); bittern converts {', '.join(SUPPORTED_TYPES)}"
        )
    act = getattr(hf, "hidden_act", "silu")
    if act != "silu":
        raise BitternError(f"unsupported MLP activation {act!r} (bittern's llama MLP is SwiGLU)")
    dim, heads = int(hf.hidden_size), int(hf.num_attention_heads)
    head_dim = getattr(hf, "head_dim", None) or dim // heads
    if head_dim * heads != dim:
        raise BitternError(f"head_dim {head_dim} x {heads} heads != hidden size {dim} is not supported")
    cfg = ModelConfig(
        arch="llama",
        quant=quant,
        vocab_size=int(hf.vocab_size),
        vocab_multiple=1,
        dim=dim,
        n_layers=int(hf.num_hidden_layers),
        n_heads=heads,
        n_kv_heads=int(getattr(hf, "num_key_value_heads", None) or heads),
        ffn_dim=int(hf.intermediate_size),
        max_seq_len=_max_seq_len(hf),
        rope_theta=_rope(hf),
        norm_eps=float(hf.rms_norm_eps),
        tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        bias=_has_bias(hf),
    )
    return cfg.resolved()
