"""Save a bittern tokenizer as a transformers fast tokenizer (tokenizer.json + tokenizer_config.json)."""

from __future__ import annotations

from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from bittern.data.tokenizer import ByteTokenizer, Tokenizer, _BackendTokenizer
from bittern.errors import BitternError

BYTE_EOS = "<|endoftext|>"


def byte_level_backend() -> tokenizers.Tokenizer:
    """A `tokenizers` tokenizer that encodes like ByteTokenizer: byte b -> id b, EOS -> 256."""
    backend = tokenizers.Tokenizer(models.BPE(vocab=_gpt2_byte_vocab(), merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([BYTE_EOS])
    return backend


def _gpt2_byte_vocab() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: printable Latin-1 stands for itself, other bytes for 256 + n."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}


def save_hf_tokenizer(tokenizer: Tokenizer, directory: Path) -> None:
    """Write tokenizer.json and tokenizer_config.json that AutoTokenizer loads without bittern."""
    from transformers import PreTrainedTokenizerFast

    if isinstance(tokenizer, ByteTokenizer):
        backend, eos = byte_level_backend(), BYTE_EOS
    elif isinstance(tokenizer, _BackendTokenizer):
        backend, eos = tokenizer.backend, tokenizer.eos_token
    else:
        raise BitternError(f"cannot export tokenizer of kind {tokenizer.kind!r} to transformers")
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos)
    fast.save_pretrained(str(directory))
