"""Host-side cost of each piece of the fused BitLinear path, in microseconds per call.

Tiny tensors (the GPU finishes each kernel long before the host issues the next), so the
wall time of a loop is the time the host spends issuing it: the Python of the custom-op
wrappers, the layer's check of its codes, Triton's launcher and autotuner, autograd. Compared with
nn.Linear and the reference BitLinear at the same shape. JSON out.

    PYTHONPATH=. python benchmarks/host_overhead.py --out host.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

CALLS = 300


def per_call_us(fn) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(CALLS):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e6 / CALLS


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    from bittern.kernels import actquant
    from bittern.kernels.int8_mm import int8_mm
    from bittern.kernels.weightquant import ternarize_weight
    from bittern.nn import BitLinear, CodeRefresher, KernelOptions, configure_fast_path, fastpath

    ops = torch.ops.bittern
    M, K, N = 64, 256, 256
    x = torch.randn(M, K, device="cuda", requires_grad=True)
    w = torch.randn(N, K, device="cuda")
    norm_w = torch.ones(K, device="cuda")
    codes, scale, _ = actquant.rmsnorm_quant(x.detach(), norm_w, 1e-6)
    w_codes, gamma = ternarize_weight(w)
    g = torch.randn(M, N, device="cuda")

    def layer_pass(layer):
        def run():
            with torch.autocast("cuda", torch.bfloat16):
                y = layer(x)
            y.backward(g.to(y.dtype))

        return run

    linear = nn.Linear(K, N, bias=False).cuda()
    fused = BitLinear(K, N).cuda()
    configure_fast_path(fused)
    refresher = CodeRefresher(fused)
    reference = BitLinear(K, N).cuda()
    configure_fast_path(reference, KernelOptions(enabled=False))
    pieces = {
        "empty torch op (x.view)": lambda: x.view(-1),
        "BitLinear.sync_lambda (unchanged)": fused.sync_lambda,
        "fastpath.layer_codes (current)": lambda: fastpath.layer_codes(fused, False),
        "CodeRefresher.sync (one layer, current)": refresher.sync,
        "actquant.rmsnorm_quant (launcher)": lambda: actquant.rmsnorm_quant(x.detach(), norm_w, 1e-6),
        "ops.rmsnorm_quant (custom op)": lambda: ops.rmsnorm_quant(x.detach(), norm_w, 1e-6),
        "int8_mm autotuned (launcher)": lambda: int8_mm(codes, w_codes, scale, gamma, torch.bfloat16),
        "int8_mm fixed config (launcher)": lambda: int8_mm(
            codes, w_codes, scale, gamma, torch.bfloat16, config=(64, 64, 64, 4, 3)
        ),
        "ops.int8_mm (custom op)": lambda: ops.int8_mm(codes, w_codes, scale, gamma, torch.bfloat16),
        "ops.bitlinear_forward": lambda: ops.bitlinear_forward(
            x.detach(), norm_w, w_codes, gamma, 1e-6, torch.bfloat16
        ),
        "ops.bitlinear_grad_input": lambda: ops.bitlinear_grad_input(
            g.bfloat16(), w_codes, gamma, None, False
        ),
        "ops.bitlinear_grad_weight": lambda: ops.bitlinear_grad_weight(
            g.bfloat16(), codes, scale, False, torch.float32
        ),
        "ops.rmsnorm_quant_backward": lambda: ops.rmsnorm_quant_backward(
            g[:, :K].contiguous(), x.detach(), norm_w, scale
        ),
        "nn.Linear fwd+bwd": layer_pass(linear),
        "BitLinear reference fwd+bwd": layer_pass(reference),
        "BitLinear fused fwd+bwd": layer_pass(fused),
        # compiled: Inductor launches the fused path's Triton kernels from its own code
        "nn.Linear compiled fwd+bwd": layer_pass(torch.compile(linear)),
        "BitLinear reference compiled fwd+bwd": layer_pass(torch.compile(reference)),
        "BitLinear fused compiled fwd+bwd": layer_pass(torch.compile(fused)),
    }
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    report["us_per_call"] = {}
    for name, fn in pieces.items():
        us = per_call_us(fn)
        report["us_per_call"][name] = us
        print(f"{us:9.1f} us  {name}", flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
