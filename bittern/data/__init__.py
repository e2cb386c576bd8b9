"""Data layer: document sources, tokenizers, shard preparation and the token loader."""

from bittern.data.loader import TokenDataset
from bittern.data.prepare import ensure_builtin_dataset, prepare_dataset
from bittern.data.sources import iter_documents
from bittern.data.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    HFTokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
)

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "HFTokenizer",
    "TokenDataset",
    "Tokenizer",
    "build_tokenizer",
    "ensure_builtin_dataset",
    "iter_documents",
    "load_tokenizer",
    "prepare_dataset",
]
