"""GGUF export: tensors read back with the gguf package dequantize to codes * gamma; metadata is there."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize  # noqa: E402

import bittern  # noqa: E402
from bittern.errors import BitternError  # noqa: E402
from bittern.export.gguf_export import check_exportable, export_gguf  # noqa: E402
from bittern.models import ModelConfig  # noqa: E402
from bittern.quant import ternarize  # noqa: E402

PROJ = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def field(reader, key):
    f = reader.get_field(key)
    return f.contents() if f is not None else None


@pytest.mark.parametrize("qtype", ["TQ2_0", "TQ1_0"])
def test_tensors_read_back_as_codes_times_gamma(trained_run, tmp_path, qtype):
    run = trained_run("gguf")
    result = export_gguf(run, tmp_path / "m.gguf", qtype)
    model, _ = bittern.load(run)
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    tensors = {t.name: t for t in reader.tensors}
    for i in range(model.config.n_layers):
        for theirs, ours in PROJ.items():
            t = tensors[f"blk.{i}.{theirs}.weight"]
            assert t.tensor_type == gguf.GGMLQuantizationType[qtype]
            codes, gamma = ternarize(model.get_submodule(f"layers.{i}.{ours}").weight)
            stored = dequantize(t.data, t.tensor_type)
            assert np.array_equal(stored, codes.numpy().astype(np.float32))
            scale = tensors[f"blk.{i}.{theirs}.scale"].data
            assert scale.dtype == np.float32 and scale.tolist() == [gamma.item()]
    emb = tensors["token_embd.weight"].data
    assert np.array_equal(emb, model.embed_tokens.weight.detach().numpy())
    assert "output.weight" not in tensors
    bits = 2.0 if qtype == "TQ2_0" else 1.6
    assert result.quantized_params * bits / 8 < result.bytes


def test_metadata(trained_run, tmp_path):
    run = trained_run("gguf")
    export_gguf(run, tmp_path / "m.gguf")
    model, tokenizer = bittern.load(run)
    cfg = model.config
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert field(reader, "general.architecture") == "bitnet"
    assert field(reader, "bitnet.embedding_length") == cfg.dim
    assert field(reader, "bitnet.block_count") == cfg.n_layers
    assert field(reader, "bitnet.attention.head_count_kv") == cfg.n_kv_heads
    assert field(reader, "bitnet.rope.freq_base") == cfg.rope_theta
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == cfg.padded_vocab_size
    assert field(reader, "tokenizer.ggml.eos_token_id") == tokenizer.eos_id
    assert tokens[ord("h")] == "h" and tokens[ord(" ")] == "Ġ"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"arch": "bitnet"}, "SiLU"),
        ({"norm_placement": "inside"}, "norm_placement"),
        ({"tie_embeddings": False}, "tie_embeddings"),
        ({"weight_granularity": "channel"}, "weight_granularity"),
        ({"dim": 128}, "multiples of 256"),
        ({"ffn_dim": 300}, "multiples of 256"),
    ],
)
def test_unrepresentable_models_are_refused(overrides, message):
    base = dict(
        vocab_size=257, norm_placement="sublayer", tie_embeddings=True, dim=256, n_heads=4, ffn_dim=512
    )
    with pytest.raises(BitternError, match=message):
        check_exportable(ModelConfig(**{**base, **overrides}).resolved())


def test_refusals_write_nothing(trained_run, tmp_path):
    with pytest.raises(BitternError, match="norm_placement"):
        export_gguf(trained_run("llama"), tmp_path / "m.gguf")
    (tmp_path / "exists.gguf").write_text("x")
    with pytest.raises(BitternError, match="already exists"):
        export_gguf(trained_run("gguf"), tmp_path / "exists.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.gguf"]
    assert (tmp_path / "exists.gguf").read_text() == "x"
    with pytest.raises(BitternError, match="gguf-type"):
        export_gguf(trained_run("gguf"), tmp_path / "x.gguf", "Q4_0")


def test_dequantized_weights_reproduce_the_layer():
    torch.manual_seed(0)
    w = torch.randn(8, 256)
    codes, gamma = ternarize(w)
    data = gguf.quants.quantize(codes.float().numpy(), gguf.GGMLQuantizationType.TQ1_0)
    back = dequantize(data, gguf.GGMLQuantizationType.TQ1_0)
    assert np.array_equal(back, codes.numpy().astype(np.float32))
