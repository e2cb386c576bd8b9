"""Open the dataset a config names: a prepared folder, or a built-in corpus (cached)."""

from __future__ import annotations

from pathlib import Path

from bittern.config import DataConfig
from bittern.data.loader import TokenDataset
from bittern.data.prepare import ensure_builtin_dataset
from bittern.data.tokenizer import build_tokenizer
from bittern.errors import BitternError


def open_dataset(cfg: DataConfig, progress: bool = True) -> TokenDataset:
    """The TokenDataset for `cfg`; checks an explicit data.tokenizer against a prepared folder."""
    if cfg.path:
        path = Path(cfg.path)
        if not path.exists():
            raise BitternError(f"data.path does not exist: {path}")
        data = TokenDataset(path)
        if cfg.tokenizer:
            _check_tokenizer_spec(cfg.tokenizer, data)
        return data
    path = ensure_builtin_dataset(
        cfg.source,
        tokenizer=cfg.tokenizer or "byte",
        vocab_size=cfg.vocab_size,
        val_fraction=cfg.val_fraction,
        cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else None,
        progress=progress,
    )
    return TokenDataset(path)


def resolved_tokenizer(cfg: DataConfig, data: TokenDataset) -> str:
    """The data.tokenizer a run used, for its resolved config: "" becomes what `data` holds.

    "" trains on byte tokens for a built-in corpus and on the prepared folder's tokenizer for
    data.path; that is "byte" or "bpe" when the tokenizer is one of bittern's own. A local
    Hugging Face tokenizer has no name to write but its path, which the folder does not keep.
    """
    if cfg.tokenizer:
        return cfg.tokenizer
    kind = data.tokenizer_identity.get("kind")
    return kind if kind in ("byte", "bpe") else ""


def _check_tokenizer_spec(spec: str, data: TokenDataset) -> None:
    kind = data.tokenizer_identity.get("kind")
    if spec in ("byte", "bpe"):
        if spec != kind:
            raise BitternError(
                f"tokenizer mismatch: data.tokenizer is {spec!r} but {data.path} holds {kind!r}"
            )
        return
    data.check_tokenizer(build_tokenizer(spec, None, 0).identity())
