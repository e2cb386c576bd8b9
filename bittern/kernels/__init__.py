"""Triton kernels for 1.58-bit training, each beside the PyTorch reference it must equal.

- `actquant`: fused RMSNorm + per-token int8 activation quantization, forward and backward;
- `weightquant`: ternary weight quantization (absmean reduced on the device);
- `weightcache`: the codes of each weight, kept until an optimizer step changes it (no Triton);
- `int8_mm`: int8 x int8 -> int32 GEMM with the gamma / s_x rescale fused in the epilogue;
- `gradquant`: int8 quantization of the output gradient for the int8 backward options;
- `ops`: all of them as torch ops (torch.compile traces into them on the GPU);
- `function`: BitLinear as one autograd.Function;
- `dispatch`: when BitLinear takes this path, and `configure`, the switch the trainer turns.

Importing this package does not import Triton (the kernel modules do).
"""

from bittern.kernels.dispatch import (
    KernelOptions,
    clear_weight_cache,
    configure,
    fast_path_available,
    refresh,
    set_weight_cache,
    use_fast_path,
)

__all__ = [
    "KernelOptions",
    "clear_weight_cache",
    "configure",
    "fast_path_available",
    "refresh",
    "set_weight_cache",
    "use_fast_path",
]
