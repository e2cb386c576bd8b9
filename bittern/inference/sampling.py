"""Choosing the next token on the device: greedy, temperature, top-k and top-p, no host round trip.

A draw from softmax(logits) is argmax(probs / e) with e ~ Exponential(1) per token (the
exponential race, as gpt-fast samples): the noise is made outside the compiled step from the
caller's generator, so the step itself is deterministic and CUDA graphs can replay it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. temperature 0 is greedy; top_k 0 / top_p 1 turn those off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def noise(self, batch: int, vocab: int, device, generator: torch.Generator | None) -> torch.Tensor | None:
        """The Exponential(1) draws one sampling step consumes (None when greedy)."""
        if self.greedy:
            return None
        e = torch.empty(batch, vocab, device=device, dtype=torch.float32)
        return e.exponential_(generator=generator).clamp_(min=torch.finfo(torch.float32).tiny)


def filtered_logits(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """float32 logits / temperature with everything outside top-k and the top-p nucleus at -inf."""
    logits = logits.float() / sampling.temperature
    if sampling.top_k:
        kth = torch.topk(logits, min(sampling.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        ordered, index = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        # drop a token once the more likely ones already hold top_p (the most likely always stays)
        drop = (probs.cumsum(dim=-1) - probs) >= sampling.top_p
        logits = logits.scatter(-1, index, ordered.masked_fill(drop, float("-inf")))
    return logits


def next_token(logits: torch.Tensor, sampling: Sampling, noise: torch.Tensor | None) -> torch.Tensor:
    """Token ids (B,) from logits (B, V): argmax, or a draw given Exponential(1) `noise` (B, V)."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filtered_logits(logits, sampling), dim=-1)
    return (probs / noise).argmax(dim=-1)
