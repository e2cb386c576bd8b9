"""Tokenizers behind one small interface: bytes, trained byte-level BPE, local Hugging Face."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from bittern.errors import BitternError

META_FILE = "tokenizer_meta.json"
TOKENIZER_JSON = "tokenizer.json"
BPE_EOS = "<|endoftext|>"
_EOS_GUESSES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>")


def _sha256_json(obj: object) -> str:
    """Hash a JSON-able object in canonical form (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Tokenizer(ABC):
    """Text <-> token ids; saved to a folder and identified by a hash of its saved form."""

    kind: str
    vocab_size: int
    eos_id: int | None

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without any special tokens."""

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of several texts (subclasses may parallelize)."""
        return [self.encode(t) for t in texts]

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        """Text of `ids`, dropping the EOS token."""

    @abstractmethod
    def _serialized(self) -> dict:
        """JSON-able description that fully determines how this tokenizer encodes."""

    @abstractmethod
    def _save_files(self, directory: Path) -> None:
        """Write the files (besides tokenizer_meta.json) that reloading needs."""

    def save(self, directory: Path) -> None:
        """Write everything needed by `load_tokenizer` into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_files(directory)
        meta = {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id}
        meta.update(self._meta_extra())
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    def _meta_extra(self) -> dict:
        """Extra fields for tokenizer_meta.json."""
        return {}

    def identity(self) -> dict:
        """JSON-able fingerprint; tokenizers that encode identically have equal identity."""
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "sha256": _sha256_json(self._serialized()),
        }


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255 plus EOS = 256."""

    kind = "byte"

    def __init__(self) -> None:
        self.vocab_size = 257
        self.eos_id = 256

    def encode(self, text: str) -> list[int]:
        """The UTF-8 bytes of `text`."""
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        """UTF-8 text of the byte ids; EOS dropped, invalid bytes replaced."""
        return bytes(i for i in ids if i != self.eos_id).decode("utf-8", errors="replace")

    def _serialized(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id}

    def _save_files(self, directory: Path) -> None:
        pass


class _BackendTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` plus the name of its EOS token."""

    def __init__(self, backend: tokenizers.Tokenizer, eos_token: str | None) -> None:
        self.backend = backend
        self.eos_token = eos_token
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.eos_id = backend.token_to_id(eos_token) if eos_token is not None else None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of several texts, encoded in parallel by the Rust backend."""
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`, special tokens (EOS included) skipped."""
        return self.backend.decode(list(ids), skip_special_tokens=True)

    def _serialized(self) -> dict:
        return {"tokenizer": json.loads(self.backend.to_str()), "eos_token": self.eos_token}

    def _save_files(self, directory: Path) -> None:
        (directory / TOKENIZER_JSON).write_text(self.backend.to_str(pretty=True), encoding="utf-8")

    def _meta_extra(self) -> dict:
        return {"eos_token": self.eos_token}


class BPETokenizer(_BackendTokenizer):
    """Byte-level BPE trained on the corpus, with `<|endoftext|>` as EOS."""

    kind = "bpe"

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Train a byte-level BPE of `vocab_size` tokens on `texts` (deterministic)."""
        if vocab_size < 257 + 1:
            raise BitternError(f"BPE vocab_size must be at least 258, got {vocab_size}")
        backend = tokenizers.Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[BPE_EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend, BPE_EOS)


class HFTokenizer(_BackendTokenizer):
    """A Hugging Face (fast) tokenizer loaded from a local folder or .gguf file."""

    kind = "hf"

    @classmethod
    def from_path(cls, path: Path) -> HFTokenizer:
        """Load from a folder with tokenizer.json, any AutoTokenizer folder, or a .gguf file."""
        path = Path(path)
        if not path.exists():
            raise BitternError(f"tokenizer path does not exist: {path}")
        if path.is_dir() and (path / TOKENIZER_JSON).is_file():
            backend = _load_tokenizer_json(path / TOKENIZER_JSON)
            return cls(backend, _eos_from_config(path, backend))
        if path.is_file() and path.suffix == ".gguf":
            return cls._from_auto(path.parent, gguf_file=path.name)
        if path.is_dir():
            return cls._from_auto(path)
        raise BitternError(f"tokenizer path is neither a folder nor a .gguf file: {path}")

    @classmethod
    def _from_auto(cls, directory: Path, gguf_file: str | None = None) -> HFTokenizer:
        """Load through transformers.AutoTokenizer (offline) and keep its fast backend."""
        if gguf_file is not None:
            try:
                import gguf  # noqa: F401
            except ImportError as e:
                raise BitternError(
                    f"reading tokenizer from {directory / gguf_file} needs gguf: pip install gguf"
                ) from e
        from transformers import AutoTokenizer

        kwargs = {"gguf_file": gguf_file} if gguf_file is not None else {}
        where = directory / gguf_file if gguf_file else directory
        try:
            hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, **kwargs)
        except Exception as e:
            raise BitternError(f"cannot load Hugging Face tokenizer from {where}: {e}") from e
        backend = getattr(hf, "backend_tokenizer", None)
        if backend is None:
            raise BitternError(f"tokenizer at {where} is not a fast (tokenizer.json) tokenizer")
        return cls(backend, hf.eos_token)


def _load_tokenizer_json(path: Path) -> tokenizers.Tokenizer:
    """Read a tokenizer.json, turning parse errors into BitternError."""
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:
        raise BitternError(f"cannot read tokenizer file {path}: {e}") from e


def _eos_from_config(directory: Path, backend: tokenizers.Tokenizer) -> str | None:
    """EOS token from tokenizer_config.json beside tokenizer.json, else a well-known name."""
    config_path = directory / "tokenizer_config.json"
    if config_path.is_file():
        try:
            eos = json.loads(config_path.read_text(encoding="utf-8")).get("eos_token")
        except (json.JSONDecodeError, AttributeError) as e:
            raise BitternError(f"malformed tokenizer config {config_path}: {e}") from e
        if isinstance(eos, dict):
            eos = eos.get("content")
        if isinstance(eos, str) and backend.token_to_id(eos) is not None:
            return eos
    return next((t for t in _EOS_GUESSES if backend.token_to_id(t) is not None), None)


def build_tokenizer(spec: str, texts: Callable[[], Iterable[str]] | None, vocab_size: int) -> Tokenizer:
    """Make the tokenizer named by `spec`: "byte", "bpe" (trained on `texts()`), or a path."""
    if spec == "byte":
        return ByteTokenizer()
    if spec == "bpe":
        if texts is None:
            raise BitternError("tokenizer 'bpe' needs a corpus to train on")
        return BPETokenizer.train(texts(), vocab_size)
    path = Path(spec).expanduser()
    if not path.exists():
        raise BitternError(f"unknown tokenizer {spec!r}: expected 'byte', 'bpe', or an existing local path")
    if path.is_dir() and (path / META_FILE).is_file():  # one bittern saved (a run's tokenizer/): as saved,
        return load_tokenizer(path)  # its EOS included, so data prepared with it matches the run
    return HFTokenizer.from_path(path)


def load_tokenizer(directory: Path) -> Tokenizer:
    """Reload a tokenizer written by `Tokenizer.save`."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        kind = meta["kind"]
    except FileNotFoundError as e:
        raise BitternError(f"no saved tokenizer: {meta_path} is missing") from e
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise BitternError(f"malformed tokenizer meta {meta_path}: {e}") from e
    if kind == "byte":
        return ByteTokenizer()
    classes = {"bpe": BPETokenizer, "hf": HFTokenizer}
    if kind not in classes:
        raise BitternError(f"unknown tokenizer kind {kind!r} in {meta_path}")
    backend = _load_tokenizer_json(directory / TOKENIZER_JSON)
    return classes[kind](backend, meta.get("eos_token"))
