"""Tiny Hugging Face checkpoints built in the test: Llama, Mistral, Qwen2, with a BPE tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

transformers = pytest.importorskip("transformers")

TEXT = "the quick brown fox jumps over the lazy dog. to be or not to be, that is the question. " * 20
SIZES = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
)


def tiny_tokenizer(vocab_size: int = 300, text: str = TEXT) -> Tokenizer:
    """A byte-level BPE trained on `text`, with <|endoftext|> as token 0."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def make_hf_model(kind: str = "llama", seed: int = 0, vocab_size: int = 300, **overrides):
    """A randomly initialised tiny causal LM of `kind` (llama | mistral | qwen2), in eval mode."""
    classes = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }
    config_cls, model_cls = classes[kind]
    config = config_cls(**(SIZES | dict(vocab_size=vocab_size, rope_theta=10000.0) | overrides))
    torch.manual_seed(seed)
    model = model_cls(config).float().eval()
    with torch.no_grad():  # HF zero-initialises biases and ones norms: make every tensor count
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def save_hf(model, folder: Path, tokenizer: Tokenizer | None = None) -> Path:
    model.save_pretrained(folder)
    save_tokenizer(tokenizer or tiny_tokenizer(model.config.vocab_size), folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny untied Llama saved with save_pretrained, with its tokenizer."""
    return save_hf(make_hf_model("llama"), tmp_path_factory.mktemp("hf") / "llama", tokenizer)


def token_batch(vocab_size: int = 300, batch: int = 2, length: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=g)


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's q/k row order (interleaved rotary halves); transformers undoes it on load."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def write_gguf(model, tok: Tokenizer, path: Path, drop: tuple[str, ...] = ()) -> Path:
    """Write a tiny HF Llama as an F32 GGUF the way llama.cpp's converter names and permutes it."""
    gguf = pytest.importorskip("gguf")
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    merges = json.loads(tok.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t == "<|endoftext|>" else 1 for t, _ in vocab])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    tensors = {
        "token_embd.weight": model.model.embed_tokens.weight,
        "output_norm.weight": model.model.norm.weight,
    }
    if not cfg.tie_word_embeddings:
        tensors["output.weight"] = model.lm_head.weight
    for i, layer in enumerate(model.model.layers):
        for hf_name, gguf_name in GGUF_NAMES.items():
            t = layer.get_submodule(hf_name).weight
            if gguf_name == "attn_q":
                t = _permute(t, cfg.num_attention_heads)
            elif gguf_name == "attn_k":
                t = _permute(t, cfg.num_key_value_heads)
            tensors[f"blk.{i}.{gguf_name}.weight"] = t
    for name, t in tensors.items():
        if name not in drop:
            w.add_tensor(name, t.detach().float().numpy().copy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def llama_run(tmp_path_factory, llama_dir) -> Path:
    """llama_dir converted with quant none."""
    from bittern.convert import convert_checkpoint

    return convert_checkpoint(llama_dir, tmp_path_factory.mktemp("runs") / "llama", quant="none")
