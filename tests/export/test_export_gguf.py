"""GGUF export: tensors read back with the gguf package dequantize to codes * gamma; metadata is there.

The tokenizer tests read the metadata back and tokenize with a plain reference BPE, the way llama.cpp's
"gpt2" vocab does; when llama_cpp is installed, llama.cpp itself tokenizes and runs the export.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tokenizers import pre_tokenizers

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize  # noqa: E402

import bittern  # noqa: E402
from bittern.data.tokenizer import BPETokenizer, ByteTokenizer  # noqa: E402
from bittern.errors import BitternError  # noqa: E402
from bittern.export import load_any  # noqa: E402
from bittern.export.gguf_export import (  # noqa: E402
    ARCH,
    check_exportable,
    export_gguf,
    write_gguf,
    write_hparams,
    write_tokenizer,
)
from bittern.models import ModelConfig, build_model  # noqa: E402
from bittern.nn import bitlinear_layers  # noqa: E402
from bittern.quant import ternarize  # noqa: E402
from tests.conftest import play_text  # noqa: E402
from tests.export.conftest import BUILTIN  # noqa: E402

SAMPLE = "ROMEO.\nThe  thou art, naïve ... 'tis 1234 — café!\n\n\tend "

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
    ],
)
def test_unrepresentable_models_are_refused(overrides, message):
    base = dict(
        vocab_size=257, norm_placement="sublayer", tie_embeddings=True, dim=256, n_heads=4, ffn_dim=512
    )
    with pytest.raises(BitternError, match=message):
        check_exportable(ModelConfig(**{**base, **overrides}).resolved())


def test_one_error_lists_every_unmet_requirement_and_its_fix():
    cfg = ModelConfig(vocab_size=257, arch="bitnet", norm_placement="inside", weight_granularity="channel")
    with pytest.raises(BitternError) as e:
        check_exportable(cfg.resolved())
    message = str(e.value)
    assert "\n" not in message
    for option, fix in [
        ("arch", "--model.arch=llama"),
        ("norm_placement", "--model.norm_placement=sublayer"),
        ("tie_embeddings", "--model.tie_embeddings=true"),
        ("weight_granularity", "--model.weight_granularity=tensor"),
    ]:
        assert f"model.{option} is" in message and fix in message
    assert "bias" not in message and "256" not in message  # met, or no requirement at all


def test_row_sizes_are_no_requirement():
    for dim, ffn_dim in [(128, 352), (256, 300), (96, 64)]:
        cfg = ModelConfig(
            vocab_size=257,
            norm_placement="sublayer",
            tie_embeddings=True,
            dim=dim,
            n_heads=4,
            ffn_dim=ffn_dim,
        )
        check_exportable(cfg.resolved())


def tq2_decode(codes: np.ndarray) -> np.ndarray:
    """What TQ2_0 (block scale 1) decodes `codes` to, laid out in whole 256-code blocks."""
    qt = gguf.GGMLQuantizationType.TQ2_0
    return dequantize(gguf.quants.quantize(codes.reshape(-1, 256), qt), qt).reshape(codes.shape)


def test_rows_that_are_not_whole_blocks_go_in_f16_exactly(trained_run, tmp_path):
    """The built-in job's model (dim 128, ffn 352): each projection F16, bit for bit the values
    TQ2_0 decodes its codes to, beside the same float32 scale; bittern's reader gets the codes back."""
    run = trained_run(BUILTIN)
    result = export_gguf(run, tmp_path / "m.gguf")
    model, _ = bittern.load(run)
    assert (model.config.dim, model.config.ffn_dim) == (128, 352)
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    tensors = {t.name: t for t in reader.tensors}
    loaded, _ = load_any(tmp_path / "m.gguf")
    for i in range(model.config.n_layers):
        for theirs, ours in PROJ.items():
            t = tensors[f"blk.{i}.{theirs}.weight"]
            assert t.tensor_type == gguf.GGMLQuantizationType.F16
            codes, gamma = ternarize(model.get_submodule(f"layers.{i}.{ours}").weight)
            stored = np.asarray(t.data).astype(np.float32)
            expected = tq2_decode(codes.numpy().astype(np.float32))
            assert np.array_equal(stored.view(np.uint32), expected.view(np.uint32))
            assert tensors[f"blk.{i}.{theirs}.scale"].data.tolist() == [gamma.item()]
            frozen = loaded.get_submodule(f"layers.{i}.{ours}")
            assert torch.equal(frozen.codes, codes) and torch.equal(frozen.scale, gamma)
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert "28 F16" in result.summary()


def test_each_projection_gets_tq_where_its_rows_are_whole_blocks(tmp_path):
    """dim 256, ffn 96: gate/up/q/k/v/o rows hold 256 codes (TQ1_0), down_proj rows 96 (F16)."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=257, norm_placement="sublayer", tie_embeddings=True, dim=256, n_heads=4, ffn_dim=96
    )
    model = build_model(cfg.resolved()).eval()
    result = write_gguf(model, ByteTokenizer(), tmp_path / "m.gguf", "TQ1_0")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    for i in range(model.config.n_layers):
        for theirs in PROJ:
            assert types[f"blk.{i}.{theirs}.weight"] == ("F16" if theirs == "ffn_down" else "TQ1_0")
    assert "4 F16, 24 TQ1_0" in result.note
    loaded, _ = load_any(tmp_path / "m.gguf")
    for name, layer in bitlinear_layers(model):
        codes, gamma = ternarize(layer.weight)
        assert torch.equal(loaded.get_submodule(name).codes, codes)
        assert torch.equal(loaded.get_submodule(name).scale, gamma)


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


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: printable Latin-1 stands for itself, other bytes for U+0100 on."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}


def reference_bpe(text: str, tokens: list[str], merges: list[str]) -> list[int]:
    """Byte-level BPE: GPT-2 split, then repeatedly merge the adjacent pair of lowest rank."""
    rank = {tuple(m.split(" ", 1)): i for i, m in enumerate(merges)}
    index = {t: i for i, t in enumerate(tokens)}
    ids = []
    for word, _ in pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(text):
        parts = list(word)
        while len(parts) > 1:
            pairs = zip(parts, parts[1:], strict=False)
            best, i = min((rank.get(pair, math.inf), i) for i, pair in enumerate(pairs))
            if best == math.inf:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        ids += [index[p] for p in parts]
    return ids


def tokenizer_gguf(tokenizer, path) -> ModelConfig:
    """A vocab-only GGUF (hyperparameters and tokenizer, no tensors) for `tokenizer` at `path`."""
    cfg = ModelConfig(
        vocab_size=tokenizer.vocab_size, norm_placement="sublayer", tie_embeddings=True, dim=256, n_heads=4
    ).resolved()
    writer = gguf.GGUFWriter(str(path), ARCH)
    write_hparams(writer, cfg, gguf.LlamaFileType.MOSTLY_TQ2_0)
    write_tokenizer(writer, tokenizer, cfg.padded_vocab_size)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return cfg


@pytest.fixture(scope="module", params=["byte", "bpe"])
def tokenizer(request):
    if request.param == "byte":
        return ByteTokenizer()
    return BPETokenizer.train([play_text(0, 300), SAMPLE], vocab_size=400)


def test_tokenizer_metadata_reproduces_token_ids(tokenizer, tmp_path):
    cfg = tokenizer_gguf(tokenizer, tmp_path / "vocab.gguf")
    reader = gguf.GGUFReader(tmp_path / "vocab.gguf")
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    # llama.cpp's name for the GPT-2 split regex without clean-up of spaces when detokenizing
    assert field(reader, "tokenizer.ggml.pre") == "trillion"
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = field(reader, "tokenizer.ggml.merges")
    assert len(tokens) == len(types) == cfg.padded_vocab_size
    assert merges, "llama.cpp refuses a gpt2 vocab without merges"
    eos = tokenizer.eos_id
    assert field(reader, "tokenizer.ggml.eos_token_id") == eos
    assert types[eos] == gguf.TokenType.CONTROL
    assert all(t == gguf.TokenType.NORMAL for i, t in enumerate(types[: tokenizer.vocab_size]) if i != eos)
    assert all(t == gguf.TokenType.UNUSED for t in types[tokenizer.vocab_size :])
    ids = tokenizer.encode(SAMPLE)
    assert reference_bpe(SAMPLE, tokens, merges) == ids
    decoder = gpt2_byte_decoder()
    text = bytes(decoder[c] for i in ids for c in tokens[i]).decode("utf-8")
    assert text == tokenizer.decode(ids) == SAMPLE


def test_byte_tokenizer_is_bytes_in_id_order(tmp_path):
    tokenizer_gguf(ByteTokenizer(), tmp_path / "vocab.gguf")
    tokens = field(gguf.GGUFReader(tmp_path / "vocab.gguf"), "tokenizer.ggml.tokens")
    decoder = gpt2_byte_decoder()
    assert [decoder[t] for t in tokens[:256]] == list(range(256))
    assert tokens[256] == "<|endoftext|>"


def test_llamacpp_tokenizes_and_decodes_like_bittern(tokenizer, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    tokenizer_gguf(tokenizer, tmp_path / "vocab.gguf")
    llm = llama_cpp.Llama(model_path=str(tmp_path / "vocab.gguf"), vocab_only=True, verbose=False)
    ids = tokenizer.encode(SAMPLE)
    assert llm.tokenize(SAMPLE.encode(), add_bos=False, special=False) == ids
    assert llm.detokenize(ids).decode() == tokenizer.decode(ids)  # token by token
    vocab = llama_cpp.llama_model_get_vocab(llm.model)  # whole sequence: where llama.cpp can clean spaces
    buf = ctypes.create_string_buffer(4 * len(SAMPLE) + 64)
    n = llama_cpp.llama_detokenize(
        vocab, (llama_cpp.llama_token * len(ids))(*ids), len(ids), buf, len(buf), False, False
    )
    assert buf.raw[:n].decode() == tokenizer.decode(ids)


@pytest.mark.parametrize("name", ["gguf", BUILTIN])  # TQ1_0 blocks; the built-in job's F16 codes
def test_llamacpp_perplexity_agrees_with_bittern(trained_run, tmp_path, name):
    llama_cpp = pytest.importorskip("llama_cpp")
    run = trained_run(name)
    export_gguf(run, tmp_path / "m.gguf", "TQ1_0")
    model, tokenizer = bittern.load(run)
    ids = tokenizer.encode(play_text(99, 20))[:64]
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0, :-1].float()
    llm = llama_cpp.Llama(
        model_path=str(tmp_path / "m.gguf"), n_ctx=64, logits_all=True, verbose=False, n_threads=1
    )
    llm.eval(ids)
    theirs = torch.from_numpy(np.array(llm.scores[: len(ids) - 1], dtype=np.float32))
    target = torch.tensor(ids[1:])
    ppl_ours = F.cross_entropy(ours, target).exp().item()
    ppl_theirs = F.cross_entropy(theirs, target).exp().item()
    assert ppl_theirs == pytest.approx(ppl_ours, rel=0.01)
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() > 0.9
