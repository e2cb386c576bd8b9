"""Text in, text out through the fast decoder: what `bittern generate` runs on CUDA."""

from __future__ import annotations

import torch

from bittern.inference.decoder import StaticDecoder
from bittern.inference.generate import Generation, generate, plan
from bittern.inference.sampling import Sampling


def generate_texts(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    sampling: Sampling,
    seed: int = 0,
    compile: bool = True,
) -> tuple[list[str], Generation]:
    """Every prompt in one batch: (prompt plus continuation for each, the timed Generation).

    The model comes from `prepare_for_decoding`; `compile` captures the decode step in CUDA graphs
    (on CUDA only; the first call compiles, which takes a while for large models).
    """
    device = model.embed_tokens.weight.device
    ids = [tokenizer.encode(p) for p in prompts]
    _, _, need = plan(ids, max_new_tokens, model.config.max_seq_len, tokenizer.eos_id)
    decoder = StaticDecoder(model, len(ids), need, sampling)
    if compile and device.type == "cuda":
        decoder.compile()
    gen = torch.Generator(device=device).manual_seed(seed)
    result = generate(decoder, ids, max_new_tokens, tokenizer.eos_id, gen)
    return [p + tokenizer.decode(t) for p, t in zip(prompts, result.tokens, strict=True)], result
