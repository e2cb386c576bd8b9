"""A static-shape decoder over a bittern Transformer's own modules: preallocated KV cache, prefill, step.

gpt-fast's recipe: the cache is allocated once at its full length and written at a position
tensor, attention always spans the whole cache under a mask built from positions, and nothing in
`step` branches on data, so `torch.compile(mode="reduce-overhead")` captures one token's work in
a CUDA graph and replays it. The model's weights and submodules (norms, projections, MLPs, head)
are called as they are: training numerics are untouched, and any linear layer works (nn.Linear of
the twin, BitLinear, TernaryLinear, PackedTernaryLinear; packed q/k/v and gate/up grouped by
`bittern.inference.fuse` run as one kernel launch through `apply_shared`).

Rows of a batch may hold prompts of different lengths: they are right-padded for the prefill (a
real token only attends to earlier real tokens, and per-token quantization keeps rows apart) and
each row then decodes at its own position, overwriting the padding's cache entries as it goes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bittern.inference.sampling import Sampling, next_token
from bittern.models.transformer import Attention, Transformer
from bittern.nn.bitlinear import apply_shared


class StaticKVCache(nn.Module):
    """Keys and values (batch, kv heads, max_len, head_dim) of one layer, written at positions."""

    def __init__(self, batch: int, max_len: int, n_kv: int, head_dim: int, dtype, device) -> None:
        super().__init__()
        shape = (batch, n_kv, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("rows", torch.arange(batch, device=device)[:, None], persistent=False)

    def update(
        self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, kv heads, T, hd) at positions `pos` (B, T); return the whole cache."""
        self.k[self.rows, :, pos] = k.transpose(1, 2).to(self.k.dtype)
        self.v[self.rows, :, pos] = v.transpose(1, 2).to(self.v.dtype)
        return self.k, self.v


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`apply_rope` with a position per row: x (B, T, H, hd), cos / sin (B, T, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos[:, :, None].to(x.dtype) + rotated * sin[:, :, None].to(x.dtype)


class StaticDecoder(nn.Module):
    """Prefill and one-token steps of `model` for `batch` rows of at most `max_len` tokens."""

    def __init__(
        self, model: Transformer, batch: int, max_len: int, sampling: Sampling | None = None
    ) -> None:
        super().__init__()
        cfg = model.config
        if max_len > cfg.max_seq_len:
            raise ValueError(f"max_len {max_len} exceeds the model's max_seq_len {cfg.max_seq_len}")
        self.model, self.batch, self.max_len = model, batch, max_len
        self.sampling = sampling or Sampling()
        w = model.embed_tokens.weight
        self.caches = nn.ModuleList(
            StaticKVCache(batch, max_len, cfg.n_kv_heads, cfg.head_dim, w.dtype, w.device)
            for _ in range(cfg.n_layers)
        )
        self.register_buffer("key_pos", torch.arange(max_len, device=w.device), persistent=False)
        self._step, self.compiled = self.step, False

    def compile(self, mode: str = "reduce-overhead") -> StaticDecoder:
        """Compile `step` (CUDA graphs with the default mode); prefill stays eager (prompts vary)."""
        self._step = torch.compile(self.step, mode=mode, fullgraph=True, dynamic=False)
        self.compiled = True
        return self

    def hidden(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The last block's output (B, T, dim) for tokens `ids` at positions `pos` (both (B, T))."""
        m = self.model
        pos = pos.clamp(max=self.max_len - 1)  # rows past their budget write (and are read) nowhere else
        cos, sin = m.rope_cos[pos], m.rope_sin[pos]
        mask = (self.key_pos[None, None, :] <= pos[:, :, None])[:, None]  # (B, 1, T, max_len)
        x = m.embed_tokens(ids)
        for block, cache in zip(m.layers, self.caches, strict=True):
            x = x + self._attention(block.self_attn, block.input_layernorm(x), cos, sin, pos, mask, cache)
            x = x + block.mlp(block.post_attention_layernorm(x))
        return x

    def _attention(self, attn: Attention, x, cos, sin, pos, mask, cache: StaticKVCache) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = apply_shared((attn.q_proj, attn.k_proj, attn.v_proj), x)
        q = _rope(q.view(B, T, attn.n_heads, attn.head_dim), cos, sin).transpose(1, 2)
        k = _rope(k.view(B, T, attn.n_kv_heads, attn.head_dim), cos, sin).transpose(1, 2)
        v = v.view(B, T, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        k, v = cache.update(pos, k, v)
        if attn.n_kv_heads != attn.n_heads:  # grouped-query attention, as the model does it
            rep = attn.n_heads // attn.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, attn.n_heads * attn.head_dim)
        if attn.attn_sub_norm is not None:
            y = attn.attn_sub_norm(y)
        return attn.o_proj(y)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """float32 logits over the tokenizer's vocabulary (padding rows of the head cut off)."""
        m = self.model
        return m.lm_head(m.norm(h)).float()[..., : m.config.vocab_size]

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Fill the cache from right-padded prompts `ids` (B, T) of `lengths` (B,): last tokens' logits."""
        B, T = ids.shape
        pos = torch.arange(T, device=ids.device)[None].expand(B, T)
        h = self.hidden(ids, pos)
        return self.logits(h[torch.arange(B, device=ids.device), lengths - 1])

    @torch.no_grad()
    def step(
        self, tokens: torch.Tensor, pos: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed `tokens` (B,) at positions `pos` (B,): the next tokens (B,) and their logits (B, vocab)."""
        logits = self.logits(self.hidden(tokens[:, None], pos[:, None])[:, 0])
        return next_token(logits, self.sampling, noise), logits

    def run_step(
        self,
        tokens: torch.Tensor,
        pos: torch.Tensor,
        noise: torch.Tensor | None = None,
        keep_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`step`, compiled if `compile` was called; its outputs are the caller's to keep.

        A CUDA graph's outputs are overwritten by its next replay, hence the copies.
        """
        graphed = self.compiled and tokens.is_cuda
        if graphed:
            torch.compiler.cudagraph_mark_step_begin()
        nxt, logits = self._step(tokens, pos, noise)
        if not keep_logits:
            return (nxt.clone() if graphed else nxt), None
        return (nxt.clone(), logits.clone()) if graphed else (nxt, logits)
