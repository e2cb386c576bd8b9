"""ModelConfig: presets, resolution defaults and validation."""

import pytest

from bittern.errors import BitternError
from bittern.models import PRESETS, ModelConfig


@pytest.mark.parametrize(
    "preset,expected",
    [
        ("1b", dict(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn_dim=5632)),
        ("125m", dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, ffn_dim=2048)),
        ("350m", dict(dim=1024, n_layers=24, n_heads=16, n_kv_heads=16, ffn_dim=2816)),
        ("3b", dict(dim=3200, n_layers=26, n_heads=32, n_kv_heads=32, ffn_dim=8640)),
        # BitNet b1.58 2B4T: hidden 2560, 30 layers, 20 heads / 5 kv, ffn 6912, theta 5e5
        (
            "2b",
            dict(
                arch="bitnet",
                dim=2560,
                n_layers=30,
                n_heads=20,
                n_kv_heads=5,
                ffn_dim=6912,
                rope_theta=500000.0,
                max_seq_len=4096,
                norm_placement="sublayer",
            ),
        ),
    ],
)
def test_presets_resolve_to_documented_sizes(preset, expected):
    cfg = ModelConfig(preset=preset, vocab_size=32000).resolved()
    for key, value in expected.items():
        assert getattr(cfg, key) == value, key


def test_llama_defaults():
    cfg = ModelConfig(preset="1b", vocab_size=32000).resolved()
    assert cfg.arch == "llama"
    assert cfg.norm_placement == "inside"
    assert cfg.rope_theta == 10000.0 and cfg.max_seq_len == 2048
    assert cfg.head_dim == 64


def test_explicit_values_beat_the_preset():
    cfg = ModelConfig(preset="1b", vocab_size=10, dim=64, n_heads=4, n_kv_heads=2).resolved()
    assert (cfg.dim, cfg.n_heads, cfg.n_layers) == (64, 4, 22)
    cfg = ModelConfig(preset="2b", vocab_size=10, norm_placement="inside").resolved()
    assert cfg.norm_placement == "inside"
    cfg = ModelConfig(preset="tiny", arch="bitnet", vocab_size=10).resolved()
    assert cfg.norm_placement == "sublayer"


def test_resolved_returns_a_copy():
    cfg = ModelConfig(preset="tiny", vocab_size=10)
    resolved = cfg.resolved()
    assert cfg.dim is None and resolved.dim == PRESETS["tiny"]["dim"]


def test_vocab_from_tokenizer_and_padding():
    cfg = ModelConfig(preset="tiny").resolved(vocab_size=100)
    assert cfg.vocab_size == 100 and cfg.padded_vocab_size == 128
    assert ModelConfig(preset="tiny", vocab_size=128).resolved().padded_vocab_size == 128
    assert ModelConfig(preset="tiny", vocab_size=129).resolved().padded_vocab_size == 192
    assert ModelConfig(preset="tiny", vocab_size=100, vocab_multiple=1).resolved().padded_vocab_size == 100
    # an explicit vocab size wins over the tokenizer's
    assert ModelConfig(preset="tiny", vocab_size=50).resolved(vocab_size=100).vocab_size == 50


@pytest.mark.parametrize(
    "kw",
    [
        dict(preset="7b"),
        dict(quant="int4"),
        dict(arch="gpt2"),
        dict(norm_placement="after"),
        dict(dim=100, n_heads=8),  # dim not divisible by heads
        dict(n_heads=4, n_kv_heads=3),  # heads not a multiple of kv heads
        dict(vocab_size=0),
    ],
)
def test_invalid_config_raises_bittern_error(kw):
    with pytest.raises(BitternError):
        ModelConfig(**{"preset": "tiny", "vocab_size": 100, **kw}).resolved()


@pytest.mark.parametrize(
    "kw",
    [dict(weight_granularity="row"), dict(ste="magic"), dict(gamma_multiplier=0.0)],
)
def test_invalid_quant_options_raise_bittern_error_at_validation(kw):
    with pytest.raises(BitternError):
        ModelConfig(preset="tiny", vocab_size=100, **kw).resolved()
