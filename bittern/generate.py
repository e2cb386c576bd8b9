"""Sampling text from a model with a KV cache."""

from __future__ import annotations

import math

import torch
from torch import nn

from bittern.data.tokenizer import Tokenizer
from bittern.errors import BitternError

MAX_SEED = 2**63 - 1


def check_sampling(
    max_new_tokens: int, temperature: float, top_k: int | None, num_samples: int = 1, seed: int = 0
) -> None:
    """Raise BitternError for a setting sampling cannot use, before any model is loaded."""
    if max_new_tokens < 0:
        raise BitternError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    if not math.isfinite(temperature) or temperature < 0:
        raise BitternError(f"--temperature must be a finite number >= 0 (0: greedy), got {temperature}")
    if top_k is not None and top_k < 0:
        raise BitternError(f"--top-k must be >= 0 (0: no cut), got {top_k}")
    if num_samples < 1:
        raise BitternError(f"--num-samples must be >= 1, got {num_samples}")
    if not 0 <= seed <= MAX_SEED - (num_samples - 1):
        raise BitternError(f"--seed must be in [0, 2**63 - {num_samples}], got {seed}")


def fit_context(num_prompt: int, max_new_tokens: int, max_seq_len: int) -> tuple[int, int]:
    """(prompt tokens kept, new tokens sampled): the prompt's tail and the continuation share the context.

    The prompt keeps at most max_seq_len - 1 tokens, so at least one new token fits.
    """
    kept = max(1, min(num_prompt, max_seq_len - 1))  # an empty prompt is one EOS token
    return kept, max(0, min(max_new_tokens, max_seq_len - kept))


def context_warning(num_prompt: int, max_new_tokens: int, max_seq_len: int) -> str | None:
    """A one-line note when the model's context cuts the prompt or the continuation, else None."""
    kept, new = fit_context(num_prompt, max_new_tokens, max_seq_len)
    notes = []
    if kept < num_prompt:
        notes.append(f"the prompt keeps its last {kept} of {num_prompt} tokens")
    if new < max_new_tokens:
        notes.append(f"at most {new} new tokens follow it, not {max_new_tokens}")
    if not notes:
        return None
    return f"the model's context is max_seq_len = {max_seq_len} tokens: " + "; ".join(notes)


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

    temperature 0 is greedy. Stops at `eos_id` or the model's max_seq_len (see fit_context).
    """
    check_sampling(max_new_tokens, temperature, top_k)
    device = next(model.parameters()).device
    kept, max_new_tokens = fit_context(len(prompt_ids), max_new_tokens, model.config.max_seq_len)
    ids = list(prompt_ids)[max(0, len(prompt_ids) - kept) :] or [eos_id or 0]
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
