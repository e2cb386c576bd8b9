"""Sampling text from a model with a KV cache."""

from __future__ import annotations

import torch
from torch import nn

from bittern.data.tokenizer import Tokenizer


@torch.no_grad()
def sample(
    model: nn.Module,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int | None = 50,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Prefill the prompt once, then decode one token at a time from the cache.

    temperature 0 is greedy. Stops at `eos_id` or the model's max_seq_len.
    """
    device = next(model.parameters()).device
    limit = model.config.max_seq_len
    ids = list(prompt_ids)[-limit + 1 :] or [eos_id or 0]
    max_new_tokens = min(max_new_tokens, limit - len(ids))
    cache = model.new_cache(1, len(ids) + max_new_tokens)
    logits = model(torch.tensor([ids], device=device), cache, 0)[0, -1]
    out: list[int] = []
    for i in range(max_new_tokens):
        logits = logits.float()[: model.config.vocab_size]
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            nxt = int(torch.multinomial(probs.cpu(), 1, generator=generator))
        if eos_id is not None and nxt == eos_id:
            break
        out.append(nxt)
        if i + 1 < max_new_tokens:
            logits = model(torch.tensor([[nxt]], device=device), cache, len(ids) + i)[0, -1]
    return out


def generate_text(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int = 0,
) -> str:
    """Prompt in, prompt plus continuation out."""
    gen = torch.Generator().manual_seed(seed)
    ids = tokenizer.encode(prompt)
    new = sample(model, ids, max_new_tokens, temperature, top_k, tokenizer.eos_id, gen)
    return prompt + tokenizer.decode(new)
