"""Grouped expert GEMMs: the torch grouped product and the Triton int8 x ternary kernel against references."""

from __future__ import annotations

import pytest
import torch

from bittern.kernels.grouped import (
    grouped_mm,
    grouped_mm_loop,
    grouped_ternary_linear,
    grouped_ternary_reference,
)
from bittern.nn import BitLinear, KernelOptions, configure_fast_path
from bittern.nn.fastpath import experts_take_fast_path
from bittern.quant.ste import fake_quant_activations, fake_quant_weight

COUNTS = [torch.tensor([5, 0, 70]), torch.tensor([0, 0, 1]), torch.tensor([64, 64])]


@pytest.mark.parametrize("counts", COUNTS, ids=["ragged", "one-row", "full-tiles"])
def test_grouped_mm_equals_per_expert_matmuls(counts):
    torch.manual_seed(0)
    x, w = torch.randn(int(counts.sum()), 24), torch.randn(counts.numel(), 16, 24)
    rows = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    expect = torch.stack([x[r] @ w[e].T for r, e in enumerate(rows.tolist())])
    torch.testing.assert_close(grouped_mm(x, w, counts), expect)
    torch.testing.assert_close(grouped_mm_loop(x, w, counts), expect)


@pytest.mark.parametrize("counts", COUNTS, ids=["ragged", "one-row", "full-tiles"])
def test_triton_grouped_int8_ternary_kernel_is_exact(counts):
    pytest.importorskip("triton")
    from bittern.kernels.grouped_ternary import grouped_int8_ternary_mm

    torch.manual_seed(0)
    m, e, n, k = int(counts.sum()), counts.numel(), 24, 72  # n, k not multiples of the tiles
    x_codes = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    w_codes = torch.randint(-1, 2, (e, n, k), dtype=torch.int8)
    s_x, gamma = torch.rand(m) + 0.5, torch.rand(e, n) + 0.1
    y = grouped_int8_ternary_mm(x_codes, s_x, w_codes, gamma, counts)
    rows = torch.repeat_interleave(torch.arange(e), counts).tolist()
    exact = torch.stack([(x_codes[r].long() @ w_codes[j].long().T) for r, j in enumerate(rows)])  # int64
    expect = exact.float() * gamma[rows] / s_x[:, None]
    torch.testing.assert_close(y, expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_grouped_ternary_linear_forward_and_straight_through_backward(granularity):
    pytest.importorskip("triton")
    torch.manual_seed(0)
    counts = torch.tensor([7, 0, 20])
    x = torch.randn(27, 40, requires_grad=True)
    w = torch.randn(3, 24, 40, requires_grad=True)
    y = grouped_ternary_linear(x, w, counts, granularity, 1.3)
    torch.testing.assert_close(
        y, grouped_ternary_reference(x, w, counts, granularity, 1.3), rtol=1e-5, atol=1e-5
    )
    y.square().sum().backward()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    wq = torch.stack([fake_quant_weight(we, granularity=granularity, gamma_multiplier=1.3) for we in w2])
    grouped_mm_loop(fake_quant_activations(x2), wq, counts).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-4, atol=1e-5)


def test_triton_path_is_taken_only_at_lambda_one_on_a_fast_device(cpu_kernels):
    layers = [BitLinear(16, 8) for _ in range(2)]
    x = torch.randn(4, 16)
    assert not experts_take_fast_path(layers, x)  # the CPU is no device of the default options
    for layer in layers:
        layer.kernel_options = cpu_kernels
    assert experts_take_fast_path(layers, x)
    layers[1].set_lambda(0.5)
    assert not experts_take_fast_path(layers, x)
    grouped = BitLinear(16, 8, granularity="group", group_size=8)
    grouped.kernel_options = cpu_kernels
    assert not experts_take_fast_path([grouped], x)
    layers[1].set_lambda(1.0)
    layers[0].kernel_options = KernelOptions(enabled=False, devices=cpu_kernels.devices)
    assert not experts_take_fast_path(layers, x)


@pytest.mark.parametrize(
    ("path", "kernel", "calls"),
    [("grouped", "grouped_bitlinear", 2), ("grouped-v1", "grouped_ternary_linear", 3)],
)
@pytest.mark.parametrize("placement", ["inside", "sublayer"])
def test_moe_layer_on_the_triton_kernel_equals_the_reference_loop(
    cpu_kernels, monkeypatch, path, kernel, calls, placement
):
    import bittern.models.moe as moe
    from bittern.models import ModelConfig, build_model
    from bittern.models.moe import set_expert_path

    kernel_calls = []
    original = getattr(moe, kernel)
    monkeypatch.setattr(moe, kernel, lambda *a: kernel_calls.append(1) or original(*a))

    cfg = ModelConfig(
        vocab_size=64,
        dim=32,
        n_layers=1,
        n_heads=2,
        n_kv_heads=1,
        ffn_dim=32,
        max_seq_len=16,
        moe_experts=4,
        norm_placement=placement,
    ).resolved()
    torch.manual_seed(0)
    model = build_model(cfg)
    for name, p in model.named_parameters():  # norm weights apart from 1, each its own
        if "norm" in name:
            p.data.uniform_(0.5, 1.5)
    x = torch.randint(0, 64, (2, 8))
    outs = []
    for expert_path in (path, "loop"):
        set_expert_path(model, expert_path)
        configure_fast_path(model, cpu_kernels)
        model.zero_grad()
        y = model(x)
        y.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        outs.append((y.detach(), grads))
    assert len(kernel_calls) == calls  # the grouped path ran on the Triton kernel
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-5)
    assert outs[0][1].keys() == outs[1][1].keys() and any("norm" in n for n in outs[0][1])
    for name, grad in outs[0][1].items():
        torch.testing.assert_close(grad, outs[1][1][name], rtol=1e-3, atol=1e-6, msg=name)
