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


@pytest.mark.parametrize("parts", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_expert_norm_quant_kernel_equals_its_reference(parts, dtype):
    pytest.importorskip("triton")
    from bittern.kernels import expertnorm as en

    torch.manual_seed(0)
    counts = torch.tensor([5, 0, 70, 1])
    x = torch.randn(int(counts.sum()), 40, dtype=dtype)
    w = torch.rand(parts, 4, 40) + 0.5
    codes, s_x, rstd = en.rmsnorm_quant_experts(x, w, counts, 1e-5)
    ref = en.rmsnorm_quant_experts_reference(x, w, counts, 1e-5)
    torch.testing.assert_close(codes, ref[0], rtol=0, atol=0)
    torch.testing.assert_close(s_x, ref[1])
    torch.testing.assert_close(rstd, ref[2])
    grads = torch.randn(parts, *x.shape, dtype=dtype)
    dx, dw = en.rmsnorm_experts_backward(grads, x, w, counts, rstd)
    dx_ref, dw_ref = en.rmsnorm_experts_backward_reference(grads, x, w, counts, 1e-5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # the parts' input gradients summed in float32
    torch.testing.assert_close(dx.float(), dx_ref.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(dw, dw_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize(("parts", "normed"), [(2, True), (2, False), (1, True), (1, False)])
def test_grouped_bitlinear_from_kept_codes_equals_the_reference(granularity, parts, normed):
    pytest.importorskip("triton")
    from bittern.kernels.grouped import grouped_bitlinear, grouped_bitlinear_reference
    from bittern.quant.core import ternarize

    torch.manual_seed(0)
    counts, k, n = torch.tensor([7, 0, 20]), 40, 24
    e = counts.numel()
    weights = [torch.randn(n, k, requires_grad=True) for _ in range(parts * e)]
    norm_w = (torch.rand(parts, e, k) + 0.5).requires_grad_() if normed else None
    x = torch.randn(int(counts.sum()), k, requires_grad=True)
    codes = torch.empty(e, parts * n, k, dtype=torch.int8)
    gamma = torch.empty(e, parts * n)
    for p in range(parts):
        for j in range(e):
            c, g = ternarize(weights[p * e + j].detach(), granularity, gamma_multiplier=1.3)
            codes[j, p * n : (p + 1) * n], gamma[j, p * n : (p + 1) * n] = c, g.reshape(-1)
    inputs = [x, *weights] + ([norm_w] if normed else [])
    y = grouped_bitlinear(x, norm_w, codes, gamma, counts, weights, parts, 1e-5)
    expect = grouped_bitlinear_reference(x, norm_w, weights, counts, granularity, 1.3, parts, 1e-5)
    torch.testing.assert_close(y, expect, rtol=1e-5, atol=1e-5)
    dy = torch.randn_like(y)
    for got, want in zip(
        torch.autograd.grad(y, inputs, dy), torch.autograd.grad(expect, inputs, dy), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def _moe_model(cpu_kernels):
    from bittern.models import ModelConfig, build_model

    cfg = ModelConfig(
        vocab_size=64, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=32, max_seq_len=16, moe_experts=4
    ).resolved()
    torch.manual_seed(0)
    model = build_model(cfg)
    configure_fast_path(model, cpu_kernels)
    return model


def _fresh_copy(model):
    """A deep copy of `model` keeping no codes: its next forward makes them from its weights."""
    import copy

    for m in model.modules():
        if hasattr(m, "aux_loss"):
            m.aux_loss = None  # its graph cannot be deep-copied
    fresh = copy.deepcopy(model)
    for m in fresh.modules():
        if hasattr(m, "ternary_codes"):
            m.ternary_codes = m.ternary_gamma = m.ternary_codes_t = m.ternary_source = None
    return fresh


def test_moe_kept_codes_follow_the_weights_after_a_step(cpu_kernels):
    from bittern.nn import CodeRefresher

    model = _moe_model(cpu_kernels)
    moe = model.layers[0].mlp
    x = torch.randint(0, 64, (2, 8))
    refresher = CodeRefresher(model, graphs=False)
    model(x).square().mean().backward()
    stack = moe.expert_codes["gate_up"].codes
    up = moe.experts[1].up_proj
    assert up.ternary_codes.data_ptr() == stack[1, up.out_features :].data_ptr()  # the layer's codes: a view
    torch.optim.SGD(model.parameters(), lr=1.0).step()  # moves the version counters: the forward sees it
    torch.testing.assert_close(model(x), _fresh_copy(model)(x), rtol=0, atol=0)
    with torch.no_grad():  # a write the version counters miss (a fused optimizer's): the refresh's job
        for p in moe.experts.parameters():
            p.data.mul_(-1.0)
    stale = model(x)
    fresh = _fresh_copy(model)(x)
    assert not torch.equal(stale, fresh)
    refresher.refresh()
    assert moe.expert_codes["gate_up"].codes is stack  # rewritten in place, through the layers' views
    torch.testing.assert_close(model(x), fresh, rtol=0, atol=0)
