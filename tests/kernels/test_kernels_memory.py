"""What the fused BitLinear keeps for backward: counted by saved-tensor hooks against counts from shapes.

With a norm the backward remakes the activation codes from x (`recompute_codes`, the default),
so only x and rstd are saved; the gradients are the same bit for bit as when the codes are saved.
"""

import pytest
import torch

pytest.importorskip("triton")

from benchmarks.memory_accounting import (  # noqa: E402
    analytic_bitlinear_saved,
    eager_count,
    held_storages,
    persistent_bytes,
    saved_for_backward,
)
from bittern.kernels.function import bitlinear, bitlinear_group, ternarize  # noqa: E402
from bittern.models import ModelConfig, build_model  # noqa: E402
from bittern.nn import BitLinear, KernelOptions, configure_fast_path  # noqa: E402

M, K = 24, 48
OUTS = (40, 16, 16)


def _weights(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weights = [(torch.randn(out, K, generator=g) * 0.05).requires_grad_(True) for out in OUTS[:n]]
    norms = [torch.empty(K).uniform_(0.5, 1.5, generator=g).requires_grad_(True) for _ in range(n)]
    return weights, norms


def _run(x, weights, norms, recompute, group):
    """(bytes saved, excluding what the caller holds; gradients of x, weights and norms)."""
    codes = [ternarize(w, 1.0, False) for w in weights]
    held = {t.untyped_storage().data_ptr() for t in [*weights, *norms, *(c for pair in codes for c in pair)]}

    def forward():
        if group:
            return bitlinear_group(
                x,
                weights,
                [c[0] for c in codes],
                [c[1] for c in codes],
                [None] * len(weights),
                norms,
                1e-5,
                recompute_codes=recompute,
            )
        norm = norms[0] if norms else None
        return [bitlinear(x, weights[0], *codes[0], None, norm, 1e-5, recompute_codes=recompute)]

    ys, counts = saved_for_backward(forward, held | {x.untyped_storage().data_ptr()})
    inputs = [x, *weights, *norms]
    grads = torch.autograd.grad(sum(y.float().square().sum() for y in ys), inputs)
    return sum(counts.values()), grads


@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("layers", [1, 3])
def test_saved_bytes_are_x_and_rstd_only(recompute, layers):
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    weights, norms = _weights(layers)
    saved, _ = _run(x, weights, norms, recompute, group=layers > 1)
    # x itself is held by the caller here (excluded above): count it back from its shape
    expected = analytic_bitlinear_saved(M, K, layers, 4, norm=True, recompute_codes=recompute) - M * K * 4
    assert saved == expected


def test_without_norm_the_codes_are_saved_not_x():
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    weights, _ = _weights(1)
    saved, _ = _run(x, weights, [], True, group=False)
    assert saved == analytic_bitlinear_saved(M, K, 1, 4, norm=False, recompute_codes=True)
    assert saved < M * K * 4  # less than x


@pytest.mark.parametrize("grad_int8", [False, True])
@pytest.mark.parametrize("layers", [1, 3])
def test_remade_codes_give_the_same_gradients_bit_for_bit(layers, grad_int8):
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    weights, norms = _weights(layers)
    results = []
    for recompute in (False, True):
        codes = [ternarize(w, 1.0, False) for w in weights]
        if layers > 1:
            ys = bitlinear_group(
                x,
                weights,
                [c[0] for c in codes],
                [c[1] for c in codes],
                [None] * layers,
                norms,
                1e-5,
                grad_int8,
                grad_int8,
                recompute,
            )
        else:
            ys = [bitlinear(x, weights[0], *codes[0], None, norms[0], 1e-5, grad_int8, grad_int8, recompute)]
        loss = sum(y.float().square().sum() for y in ys)
        results.append(torch.autograd.grad(loss, [x, *weights, *norms]))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


TINY = dict(preset="tiny", vocab_size=64, dim=32, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=16)


def _model(quant: str, options: KernelOptions | None):
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layers=2, quant=quant, **TINY).resolved())
    if options is not None:
        assert configure_fast_path(model, options) > 0
    return model


def test_fused_model_saves_no_more_than_the_twin(cpu_kernels):
    # 24 tokens: no activation shares a weight's shape (which would count as a weight copy)
    tokens = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    twin = eager_count(_model("none", None), tokens)
    kept = _model("ternary", KernelOptions(devices=cpu_kernels.devices, recompute_codes=False))
    remade = _model("ternary", cpu_kernels)
    kept_counts, remade_counts = eager_count(kept, tokens), eager_count(remade, tokens)
    activations = lambda c: sum(v for k, v in c.items() if k != "16-bit weight copies")  # noqa: E731
    assert activations(remade_counts) <= activations(twin)
    # what remaking saves, counted from shapes: every normed BitLinear's codes (int8) and s_x
    layers = [m for m in remade.modules() if isinstance(m, BitLinear)]
    assert all(m.norm is not None for m in layers)
    tokens_n = tokens.numel()
    codes_and_scales = sum(tokens_n * m.in_features + 4 * tokens_n for m in layers)
    assert activations(kept_counts) - activations(remade_counts) == codes_and_scales
    assert remade_counts["int8"] == 0  # no int8 activation is kept from forward to backward
    # what the layers hold between steps: one byte per weight, no transposed copy
    held = persistent_bytes(remade)
    assert held["codes_t"] == 0
    assert held["codes"] == sum(m.weight.numel() for m in layers)
    assert len(held_storages(remade)) > 0
