"""Triton kernels for 1.58-bit training, each beside the PyTorch reference it must equal.

Everything here takes tensors and plain settings; which layer runs on these kernels, and the
state a layer keeps for them, live in `bittern.nn.fastpath`.

- `actquant`: fused RMSNorm + per-token int8 activation quantization, forward and backward;
- `weightquant`: ternary weight quantization (absmean reduced on the device);
- `int8_mm`: int8 x int8 -> int32 GEMM with the gamma / s_x rescale fused in the epilogue;
- `gradquant`: int8 quantization of the output gradient for the int8 backward options;
- `ops`: all of them as torch ops (torch.compile traces into them on the GPU);
- `function`: BitLinear's math as one autograd.Function over codes, gamma and the norm weight;
- `coderefresh`: codes rewritten in place from their weights, replayed as a CUDA graph (no Triton);
- `availability`: whether the kernels run on a device type here (no Triton until asked).

Importing this package does not import Triton (the kernel modules do).
"""

from bittern.kernels.availability import available

__all__ = ["available"]
