"""The decoder: Llama-style (SwiGLU) or BitNet-2B-style (gated squared ReLU, sub-layer norms).

Module names follow Hugging Face's Llama (q_proj ... down_proj) so weights map one to one.
Every projection inside the blocks comes from `make_linear`, which gives nn.Linear for the
full-precision twin and BitLinear for the ternary model; embeddings and head stay full
precision.
"""

from __future__ import annotations

import fnmatch
import math

import torch
import torch.nn.functional as F
from torch import nn

from bittern.models.config import ModelConfig
from bittern.models.moe import MoE, active_params
from bittern.nn.bitlinear import BitLinear, BitLinearOptions, apply_shared
from bittern.nn.norm import RMSNorm


def make_linear(cfg: ModelConfig, name: str, in_f: int, out_f: int) -> nn.Linear:
    """nn.Linear for quant='none' or modules named in cfg.full_precision; else BitLinear."""
    if cfg.quant == "none" or any(fnmatch.fnmatch(name, p) for p in cfg.full_precision):
        return nn.Linear(in_f, out_f, bias=cfg.bias)
    opts = BitLinearOptions(
        quant="ternary",
        norm=cfg.norm_placement == "inside",
        norm_eps=cfg.norm_eps,
        granularity=cfg.weight_granularity,
        group_size=cfg.group_size,
        gamma_multiplier=cfg.gamma_multiplier,
        ste=cfg.ste,
    )
    return BitLinear(in_f, out_f, bias=cfg.bias, options=opts)


def rope_tables(cfg: ModelConfig, length: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (length, head_dim) in float32, in Hugging Face's rotate-half layout."""
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, device=device).float() / hd))
    freqs = torch.outer(torch.arange(length, device=device).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, T, H, hd) by position; cos/sin are (T, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    return x * cos + rotated * sin


class KVCache(nn.Module):
    """Preallocated keys/values for incremental decoding, one per layer."""

    def __init__(self, batch: int, max_len: int, n_kv: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_kv, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor):
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, prefix: str) -> None:
        super().__init__()
        hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        self.n_heads, self.n_kv_heads, self.head_dim = nh, nkv, hd
        self.q_proj = make_linear(cfg, f"{prefix}.q_proj", cfg.dim, nh * hd)
        self.k_proj = make_linear(cfg, f"{prefix}.k_proj", cfg.dim, nkv * hd)
        self.v_proj = make_linear(cfg, f"{prefix}.v_proj", cfg.dim, nkv * hd)
        self.o_proj = make_linear(cfg, f"{prefix}.o_proj", nh * hd, cfg.dim)
        sub = cfg.norm_placement == "sublayer"
        self.attn_sub_norm = RMSNorm(cfg.dim, cfg.norm_eps) if sub else None

    def forward(
        self, x, cos, sin, cache: KVCache | None = None, start: int = 0, norm: nn.Module | None = None
    ):
        """Attention over norm(x) (x itself without `norm`: the caller normalized it)."""
        B, T, _ = x.shape
        # norm(x) and its quantization once for q/k/v when fused
        q, k, v = apply_shared((self.q_proj, self.k_proj, self.v_proj), x, norm=norm)
        q = apply_rope(q.view(B, T, self.n_heads, self.head_dim), cos, sin)
        k = apply_rope(k.view(B, T, self.n_kv_heads, self.head_dim), cos, sin)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(start, k, v)
        if self.n_kv_heads != self.n_heads:  # grouped-query attention: share each kv head
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if start == 0 or cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # queries at positions start..start+T-1 see keys 0..their own position
            pos_q = torch.arange(start, start + T, device=x.device)[:, None]
            mask = torch.arange(k.shape[2], device=x.device)[None, :] <= pos_q
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        (out,) = apply_shared((self.o_proj,), y, norm=self.attn_sub_norm)  # sub-norm + quantize fused
        return out


class FeedForward(nn.Module):
    """SwiGLU (llama) or gated squared ReLU (bitnet): down(act(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, prefix: str, ffn_dim: int | None = None) -> None:
        super().__init__()
        ffn_dim = ffn_dim or cfg.ffn_dim  # an expert's may be narrower
        self.gate_proj = make_linear(cfg, f"{prefix}.gate_proj", cfg.dim, ffn_dim)
        self.up_proj = make_linear(cfg, f"{prefix}.up_proj", cfg.dim, ffn_dim)
        self.down_proj = make_linear(cfg, f"{prefix}.down_proj", ffn_dim, cfg.dim)
        sub = cfg.norm_placement == "sublayer"
        self.ffn_sub_norm = RMSNorm(ffn_dim, cfg.norm_eps) if sub else None
        self.squared_relu = cfg.arch == "bitnet"

    def forward(self, x: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        """The FFN of norm(x) (x itself without `norm`: the caller normalized it)."""
        g, u = apply_shared((self.gate_proj, self.up_proj), x, norm=norm)  # one norm pass when fused
        g = F.relu(g).square() if self.squared_relu else F.silu(g)
        (out,) = apply_shared((self.down_proj,), g * u, norm=self.ffn_sub_norm)  # sub-norm + quantize fused
        return out


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__()
        prefix = f"layers.{index}"
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg, f"{prefix}.self_attn")
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        if index in cfg.moe_layer_indices():
            self.mlp = MoE(cfg, f"{prefix}.mlp", lambda name, width: FeedForward(cfg, name, width))
        else:
            self.mlp = FeedForward(cfg, f"{prefix}.mlp")

    def forward(self, x, cos, sin, cache: KVCache | None = None, start: int = 0):
        # the norms run inside the projections' calls: fused with their quantization when it is one
        x = x + self.self_attn(x, cos, sin, cache, start, norm=self.input_layernorm)
        if isinstance(self.mlp, FeedForward):
            return x + self.mlp(x, norm=self.post_attention_layernorm)
        return x + self.mlp(self.post_attention_layernorm(x))  # the router reads norm(x) too


class Transformer(nn.Module):
    """Decoder-only language model; forward(input_ids) returns logits (B, T, vocab)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        vocab = cfg.padded_vocab_size
        self.embed_tokens = nn.Embedding(vocab, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, vocab, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(cfg, cfg.max_seq_len)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std); residual outputs scaled by 1/sqrt(2 * n_layers) (GPT-2)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                nn.init.ones_(p) if name.endswith("norm.weight") else nn.init.zeros_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(p, 0.0, std)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def new_cache(self, batch: int, max_len: int | None = None) -> list[KVCache]:
        """One KVCache per layer for `generate`, on the model's device and dtype."""
        cfg, w = self.config, self.embed_tokens.weight
        n = max_len or cfg.max_seq_len
        return [
            KVCache(batch, n, cfg.n_kv_heads, cfg.head_dim, w.dtype, w.device) for _ in range(cfg.n_layers)
        ]

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: list[KVCache] | None = None,
        start: int = 0,
        return_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, T, vocab); with return_hidden, (logits, [output of each block]) for distillation."""
        T = input_ids.shape[1]
        if start + T > self.config.max_seq_len:
            raise ValueError(f"sequence of {start + T} exceeds max_seq_len {self.config.max_seq_len}")
        cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]
        x = self.embed_tokens(input_ids)
        hidden = []
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, None if cache is None else cache[i], start)
            if return_hidden:
                hidden.append(x)
        logits = self.lm_head(self.norm(x))
        return (logits, hidden) if return_hidden else logits

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; without the embedding table by default (as for FLOP counts)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed_tokens.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6N (N active: MoE counts k experts) plus 12 * layers * dim * seq."""
        c = self.config
        inactive = self.num_params(non_embedding=False) - active_params(self)
        return 6 * (self.num_params() - inactive) + 12 * c.n_layers * c.dim * seq_len
