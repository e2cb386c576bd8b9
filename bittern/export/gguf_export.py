"""GGUF export for llama.cpp: ternary weights as TQ2_0 / TQ1_0 (F16 where rows are not whole blocks).

llama.cpp's bitnet graph (src/models/bitnet.cpp) is: pre-norm attention with an RMSNorm before
o_proj (attn_sub_norm), a SiLU-gated FFN with an RMSNorm before down_proj (ffn_sub_norm), NEOX
(rotate-half) RoPE, and the token embedding reused as the output head (it reads no output.weight).
That is bittern's arch "llama" with norm_placement "sublayer" and tie_embeddings; anything else is
refused, every unmet setting in one error, rather than exported as a different model.

Scale convention: each projection's codes are stored exactly (TQ block scale d = 1) and gamma goes
in a separate float32 tensor `<name>.scale` of shape {1}, which llama.cpp multiplies into the
matmul output (W = codes * scale). TQ blocks hold 256 codes of one row, and llama.cpp refuses a
tensor whose rows are not whole blocks; such a projection's codes go in F16, which holds -1, 0, 1
exactly: the same values TQ decodes to, beside the same `.scale`. Norms and the embedding stay
float32. llama.cpp quantizes activations per 256-value block (Q8_K; F16 weights: activations in
F16) rather than per token, so its outputs are close to, not identical with, bittern's;
benchmarks/llamacpp_check.py measures the perplexity gap.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from bittern.data.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer
from bittern.errors import BitternError
from bittern.export.common import ExportResult, load_run, staged_file
from bittern.models import ModelConfig, Transformer
from bittern.nn import bitlinear_layers
from bittern.nn.ternary_linear import TernaryLinear

ARCH = "bitnet"
QK_K = 256
GGUF_TYPES = ("TQ2_0", "TQ1_0")
FALLBACK_TYPE = "F16"  # projections whose rows are not whole TQ blocks
TENSOR_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.attn_sub_norm.weight": "attn_sub_norm.weight",
    "mlp.ffn_sub_norm.weight": "ffn_sub_norm.weight",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
# llama.cpp's pre-tokenizer with GPT-2's split regex (bittern's BPE pre-tokenizer) and no
# clean_up_tokenization_spaces: its "gpt-2" would turn " ," into "," when detokenizing, bittern does not.
PRE_TOKENIZER = "trillion"


# What llama.cpp's bitnet graph computes, as bittern model settings: (option, value, why).
REQUIREMENTS = (
    ("quant", "ternary", "TQ types hold ternary weights only"),
    ("arch", "llama", "its FFN is SiLU-gated, not squared ReLU"),
    ("norm_placement", "sublayer", "it has sub-layer norms, no norm inside each linear"),
    ("tie_embeddings", True, "it computes the logits with token_embd and reads no output.weight"),
    ("weight_granularity", "tensor", "it holds one scale per projection"),
    ("bias", False, "it loads no q/k/v/MLP biases"),
    ("full_precision", [], "every projection must be ternary"),
)


def _flag_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "[]" if value == [] else str(value)


def check_exportable(cfg: ModelConfig) -> None:
    """Raise one BitternError listing every setting llama.cpp's bitnet graph would compute differently.

    Row sizes are no requirement: projections whose rows are not whole TQ blocks go in F16
    (`projection_type`).
    """
    unmet = [(o, v, why) for o, v, why in REQUIREMENTS if getattr(cfg, o) != v]
    if unmet:
        found = "; ".join(f"model.{o} is {getattr(cfg, o)!r} ({why})" for o, _, why in unmet)
        fix = " ".join(f"--model.{o}={_flag_value(v)}" for o, v, _ in unmet)
        raise BitternError(
            f"gguf export: llama.cpp's bitnet graph cannot compute this model: {found}; train with {fix}"
        )


def projection_type(in_features: int, qtype: str) -> str:
    """`qtype` when each row's `in_features` codes fill whole 256-code TQ blocks, else F16.

    llama.cpp refuses a tensor whose row length is not a multiple of its type's block size. F16
    holds -1, 0 and 1 exactly, so such a projection stores exactly what its TQ block (scale 1)
    would decode to, beside the same float32 `.scale`.
    """
    return qtype if in_features % QK_K == 0 else FALLBACK_TYPE


def _projection_tensor(layer: TernaryLinear, qtype: str) -> tuple[np.ndarray, object]:
    """(data, raw_dtype) of a projection's codes: TQ blocks with scale 1 (all-zero blocks get 0), or F16."""
    import gguf
    from gguf.quants import quantize

    codes = layer.codes.float().numpy()
    kind = projection_type(layer.in_features, qtype)
    if kind == FALLBACK_TYPE:
        return codes.astype(np.float16), None
    qt = gguf.GGMLQuantizationType[kind]
    return quantize(codes, qt), qt


def write_tensors(writer, model: Transformer, qtype: str) -> None:
    """Every tensor under llama.cpp's names: codes (TQ or F16) plus float32 `.scale`, the rest float32."""
    ternary = dict(bitlinear_layers(model))
    writer.add_tensor("token_embd.weight", model.embed_tokens.weight.detach().float().numpy())
    writer.add_tensor("output_norm.weight", model.norm.weight.detach().float().numpy())
    for i, block in enumerate(model.layers):
        for ours, theirs in TENSOR_NAMES.items():
            name = f"blk.{i}.{theirs}"
            if ours.endswith(".weight"):
                writer.add_tensor(name, block.get_parameter(ours).detach().float().numpy())
                continue
            frozen = TernaryLinear.from_bitlinear(ternary[f"layers.{i}.{ours}"])
            data, raw = _projection_tensor(frozen, qtype)
            writer.add_tensor(f"{name}.weight", data, raw_dtype=raw)
            writer.add_tensor(f"{name}.scale", frozen.scale.reshape(1).numpy())


def projection_types(model: Transformer, qtype: str) -> Counter:
    """How many projections go in each GGUF type."""
    return Counter(projection_type(m.in_features, qtype) for _, m in bitlinear_layers(model))


def write_hparams(writer, cfg: ModelConfig, ftype: int) -> None:
    writer.add_name("bittern")
    writer.add_file_type(ftype)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.dim)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.ffn_dim)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.padded_vocab_size)


def write_tokenizer(writer, tokenizer: Tokenizer, n_vocab: int) -> None:
    """Byte-level BPE metadata (llama.cpp's "gpt2" model), padded with unused tokens to the embedding's rows.

    Both tokenizer kinds are byte-level BPE over GPT-2's byte-to-character map; ByteTokenizer is the
    one with no merges (byte b -> id b, EOS -> 256), so token ids and token texts match bittern's.
    """
    import gguf

    from bittern.export.hf_tokenizer import byte_level_backend

    if isinstance(tokenizer, ByteTokenizer):
        backend, eos = byte_level_backend(), "<|endoftext|>"
    elif isinstance(tokenizer, BPETokenizer):
        backend, eos = tokenizer.backend, tokenizer.eos_token
    else:
        raise BitternError(
            f"gguf export: tokenizer kind {tokenizer.kind!r} is not supported (byte and bpe are)"
        )
    model = json.loads(backend.to_str())["model"]
    vocab = backend.get_vocab(with_added_tokens=True)
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    for tok, idx in vocab.items():
        tokens[idx] = tok
        types[idx] = gguf.TokenType.CONTROL if tok == eos else gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges or [inert_merge(eos)])
    writer.add_bos_token_id(vocab[eos])  # never added, but unset llama.cpp takes id 11, an ordinary token
    writer.add_eos_token_id(vocab[eos])
    writer.add_add_bos_token(False)


def inert_merge(token: str) -> str:
    """A BPE merge that can never apply, standing in for an empty merge list.

    llama.cpp refuses a "gpt2" vocab without a merges key, and gguf-py writes no empty arrays. BPE
    symbols start as single characters and only merges grow them, so when this is the only merge,
    its multi-character sides never both occur and tokenization is plain byte-level.
    """
    assert len(token) > 1 and " " not in token
    return f"{token} {token}"


def export_gguf(run: str | Path, out: Path, gguf_type: str = "TQ2_0") -> ExportResult:
    """Write `run` as one GGUF file at `out` with its projections in `gguf_type` (F16 where rows
    are not whole TQ blocks)."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise BitternError("gguf export needs the gguf package: pip install 'bittern[hf]'") from None
    if gguf_type not in GGUF_TYPES:
        raise BitternError(f"--gguf-type must be one of {GGUF_TYPES}, got {gguf_type!r}")
    model, tokenizer = load_run(run)
    check_exportable(model.config)
    return write_gguf(model, tokenizer, Path(out), gguf_type)


def write_gguf(model: Transformer, tokenizer: Tokenizer, out: Path, gguf_type: str) -> ExportResult:
    """`model` (float32, on CPU, passing check_exportable) and its tokenizer as a GGUF file at `out`."""
    import gguf

    cfg = model.config
    types = projection_types(model, gguf_type)
    ftype = gguf.LlamaFileType[f"MOSTLY_{gguf_type if gguf_type in types else FALLBACK_TYPE}"]
    with staged_file(out) as tmp, torch.no_grad():
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        write_hparams(writer, cfg, ftype)
        write_tokenizer(writer, tokenizer, cfg.padded_vocab_size)
        write_tensors(writer, model, gguf_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    total = sum(p.numel() for p in model.parameters())
    n_ternary = sum(m.weight.numel() for _, m in bitlinear_layers(model))
    note = "projections: " + ", ".join(f"{n} {t}" for t, n in sorted(types.items()))
    if FALLBACK_TYPE in types:
        note += f" (F16: rows not a multiple of {QK_K} codes, which TQ blocks need)"
    return ExportResult(out, n_ternary, total, out.stat().st_size, note)
