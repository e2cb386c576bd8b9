"""bittern: train 1.58-bit (ternary-weight) language models."""

from bittern.errors import BitternError

__version__ = "0.1.0"
__all__ = ["BitternError", "load", "__version__"]


def load(path, device: str = "cpu"):
    """Load a run folder or checkpoint folder; return (model in eval mode, tokenizer)."""
    from bittern.checkpoint.load import load_model_and_tokenizer

    return load_model_and_tokenizer(path, device=device)
