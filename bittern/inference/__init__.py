"""Fast decoding: a static KV cache and CUDA-graph-friendly steps over packed ternary weights.

- `prepare`: freeze BitLinear to TernaryLinear, pack it for the GPU kernels, cast to bfloat16,
  group the packed layers that read one input;
- `decoder`: StaticDecoder, prefill and one-token steps on a preallocated cache;
- `sampling`: greedy / temperature / top-k / top-p on the device;
- `generate`: several prompts at once, timed (time to first token, tokens/s).
"""

from bittern.inference.decoder import StaticDecoder, StaticKVCache
from bittern.inference.generate import Generation, generate, plan
from bittern.inference.prepare import (
    cast_parameters,
    freeze,
    fuse,
    load_for_decoding,
    pack,
    packed_kernels_available,
    prepare_for_decoding,
    set_variant,
)
from bittern.inference.sampling import Sampling, next_token

__all__ = [
    "Generation",
    "Sampling",
    "StaticDecoder",
    "StaticKVCache",
    "cast_parameters",
    "freeze",
    "fuse",
    "generate",
    "load_for_decoding",
    "next_token",
    "pack",
    "packed_kernels_available",
    "plan",
    "prepare_for_decoding",
    "set_variant",
]
