"""Import full-precision checkpoints (Hugging Face folders, GGUF files) as bittern models and runs."""

from bittern.convert.hf import HFSource, is_gguf, read_hf
from bittern.convert.hf_config import SUPPORTED_TYPES, model_config_from_hf
from bittern.convert.run import convert_checkpoint
from bittern.convert.weights import copy_weights

__all__ = [
    "SUPPORTED_TYPES",
    "HFSource",
    "convert_checkpoint",
    "copy_weights",
    "is_gguf",
    "model_config_from_hf",
    "read_hf",
]
