"""Tiny model configs for the model tests."""

import pytest

TINY = dict(
    preset="tiny",
    vocab_size=100,
    dim=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    ffn_dim=48,
    max_seq_len=32,
)


@pytest.fixture
def make_config():
    """A resolved tiny config (dim 32, 2 layers, 4 heads, 2 kv heads, vocab 100 -> 128)."""
    from bittern.models import ModelConfig

    def make(**overrides):
        return ModelConfig(**{**TINY, **overrides}).resolved()

    return make
