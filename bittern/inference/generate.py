"""Generating from several prompts at once with a StaticDecoder, timed, reading tokens back once."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from bittern.inference.decoder import StaticDecoder
from bittern.inference.sampling import next_token

EOS_CHECK_EVERY = 64  # decode steps between checks that every row has ended (one host sync each)


@dataclass
class Generation:
    """New tokens per prompt (stopped at eos, not including it) and what producing them took."""

    tokens: list[list[int]]
    steps: int  # tokens produced per row, the first (from the prefill) included
    time_to_first_token_s: float  # prefill and the first token, prompt upload included
    decode_s: float  # every later step

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second of the steps after the first, over all rows (what decoding sustains)."""
        return len(self.tokens) * max(self.steps - 1, 0) / max(self.decode_s, 1e-9)

    @property
    def tokens_per_s(self) -> float:
        """Tokens kept (all rows) over the whole time, time to first token included."""
        return sum(map(len, self.tokens)) / max(self.time_to_first_token_s + self.decode_s, 1e-9)


def plan(prompts: list[list[int]], max_new_tokens: int, max_seq_len: int, eos_id: int | None):
    """Prompts cut as `bittern.generate.sample` cuts them, each row's token budget, and the cache length."""
    ids = [list(p)[-max_seq_len + 1 :] or [eos_id or 0] for p in prompts]
    budgets = [max(0, min(max_new_tokens, max_seq_len - len(p))) for p in ids]
    return ids, budgets, max(len(p) + b for p, b in zip(ids, budgets, strict=True))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate(
    decoder: StaticDecoder,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> Generation:
    """Prefill every prompt, then decode all rows together; tokens are read back at the end.

    The decoder's batch must equal len(prompts) and its max_len hold every row (see `plan`).
    """
    device = decoder.key_pos.device
    cfg = decoder.model.config
    ids, budgets, need = plan(prompts, max_new_tokens, cfg.max_seq_len, eos_id)
    if len(ids) != decoder.batch or need > decoder.max_len:
        raise ValueError(f"decoder holds {decoder.batch} x {decoder.max_len}, not {len(ids)} x {need}")
    steps, sampling, B = max(budgets), decoder.sampling, len(ids)
    if steps == 0:
        return Generation([[] for _ in ids], 0, 0.0, 0.0)
    width = max(map(len, ids))
    _sync(device)
    start = time.perf_counter()
    batch = torch.tensor([p + [0] * (width - len(p)) for p in ids], device=device)
    lengths = torch.tensor([len(p) for p in ids], device=device)
    logits = decoder.prefill(batch, lengths)
    tok = next_token(logits, sampling, sampling.noise(B, logits.shape[-1], device, generator))
    out = torch.empty(B, steps, dtype=torch.long, device=device)
    out[:, 0] = tok
    _sync(device)
    first = time.perf_counter()
    pos, done = lengths.clone(), 1
    for i in range(1, steps):
        noise = sampling.noise(B, logits.shape[-1], device, generator)
        tok, _ = decoder.run_step(tok, pos, noise)
        pos += 1
        out[:, i] = tok
        done = i + 1
        if (
            eos_id is not None
            and done % EOS_CHECK_EVERY == 0
            and bool((out[:, :done] == eos_id).any(1).all())
        ):
            break
    host = out[:, :done].tolist()
    end = time.perf_counter()
    tokens = []
    for row, budget in zip(host, budgets, strict=True):
        row = row[:budget]
        tokens.append(row[: row.index(eos_id)] if eos_id in row else row)
    return Generation(tokens, done, first - start, end - first)
