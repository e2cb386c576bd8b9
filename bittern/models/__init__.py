"""Decoder models (Llama-style and BitNet-2B-style) and their config presets."""

from bittern.models.config import PRESETS, ModelConfig
from bittern.models.transformer import KVCache, Transformer


def build_model(cfg: ModelConfig) -> Transformer:
    """A freshly initialised model for a resolved config."""
    return Transformer(cfg)


__all__ = ["PRESETS", "KVCache", "ModelConfig", "Transformer", "build_model"]
