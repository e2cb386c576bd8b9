"""GGUF export for llama.cpp: ternary weights as TQ2_0 / TQ1_0, llama.cpp's `bitnet` architecture.

llama.cpp's bitnet graph (src/models/bitnet.cpp) is: pre-norm attention with an RMSNorm before
o_proj (attn_sub_norm), a SiLU-gated FFN with an RMSNorm before down_proj (ffn_sub_norm), NEOX
(rotate-half) RoPE, and the token embedding reused as the output head. That is bittern's arch
"llama" with norm_placement "sublayer" and tie_embeddings; anything else is refused rather than
exported as a different model.

Scale convention: each projection's codes are stored exactly (TQ block scale d = 1) and gamma goes
in a separate float32 tensor `<name>.scale` of shape {1}, which llama.cpp multiplies into the
matmul output (W = codes * scale). Norms and the embedding stay float32. llama.cpp quantizes
activations per 256-value block (Q8_K) rather than per token, so its outputs are close to, not
identical with, bittern's; benchmarks/llamacpp_check.py measures the perplexity gap.
"""

from __future__ import annotations

import json
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


def check_exportable(cfg: ModelConfig) -> None:
    """Raise BitternError for a model llama.cpp's bitnet graph would compute differently."""
    need = {
        "quant": ("ternary", "TQ types hold ternary weights only"),
        "arch": ("llama", "llama.cpp's bitnet graph uses a SiLU-gated FFN, not squared ReLU"),
        "norm_placement": (
            "sublayer",
            "llama.cpp's bitnet graph has sub-layer norms, no norm inside each linear",
        ),
        "tie_embeddings": (True, "llama.cpp's bitnet graph reuses the token embedding as the output head"),
        "weight_granularity": ("tensor", "llama.cpp's bitnet graph holds one scale per layer"),
        "bias": (False, "llama.cpp's bitnet graph loads no q/k/v/MLP biases"),
    }
    for option, (value, why) in need.items():
        if getattr(cfg, option) != value:
            raise BitternError(
                f"gguf export needs model.{option} = {value!r} (got {getattr(cfg, option)!r}): {why}"
            )
    if cfg.full_precision:
        raise BitternError(
            "gguf export: model.full_precision is set; llama.cpp needs every projection ternary"
        )
    rows = {"dim": cfg.dim, "ffn_dim": cfg.ffn_dim}
    bad = [f"{k} = {v}" for k, v in rows.items() if v % QK_K]
    if bad:
        raise BitternError(f"gguf export: TQ row sizes must be multiples of {QK_K}; {', '.join(bad)} is not")


def _ternary_tensor(layer: TernaryLinear, qtype) -> np.ndarray:
    """Codes quantized to a TQ type with block scale 1 (all-zero blocks get 0): exact codes."""
    from gguf.quants import quantize

    return quantize(layer.codes.float().numpy(), qtype)


def write_tensors(writer, model: Transformer, qtype) -> None:
    """Every tensor under llama.cpp's names: TQ codes plus float32 `.scale`, the rest float32."""
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
            writer.add_tensor(f"{name}.weight", _ternary_tensor(frozen, qtype), raw_dtype=qtype)
            writer.add_tensor(f"{name}.scale", frozen.scale.reshape(1).numpy())


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
    """Write `run` as one GGUF file at `out` with its projections in `gguf_type`."""
    try:
        import gguf
    except ImportError:
        raise BitternError("gguf export needs the gguf package: pip install 'bittern[hf]'") from None
    if gguf_type not in GGUF_TYPES:
        raise BitternError(f"--gguf-type must be one of {GGUF_TYPES}, got {gguf_type!r}")
    model, tokenizer = load_run(run)
    cfg = model.config
    check_exportable(cfg)
    qtype = gguf.GGMLQuantizationType[gguf_type]
    ftype = gguf.LlamaFileType[f"MOSTLY_{gguf_type}"]
    with staged_file(out) as tmp, torch.no_grad():
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        write_hparams(writer, cfg, ftype)
        write_tokenizer(writer, tokenizer, cfg.padded_vocab_size)
        write_tensors(writer, model, qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    total = sum(p.numel() for p in model.parameters())
    n_ternary = sum(m.weight.numel() for _, m in bitlinear_layers(model))
    return ExportResult(out, n_ternary, total, out.stat().st_size)
