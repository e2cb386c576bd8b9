"""The fused BitLinear (an autograd.Function over custom ops, on tensors) against the reference layer."""

import copy

import pytest
import torch

pytest.importorskip("triton")

from bittern.kernels.function import bitlinear, ternarize  # noqa: E402
from bittern.nn import BitLinear  # noqa: E402

ops = torch.ops.bittern


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _layer(seed=0, in_f=48, out_f=40, **options) -> BitLinear:
    torch.manual_seed(seed)
    layer = BitLinear(in_f, out_f, **options)
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.05)
        if layer.bias is not None:
            layer.bias.normal_(0.0, 0.1)
        if layer.norm is not None:
            layer.norm.weight.uniform_(0.5, 1.5)
    return layer


def _fused(layer: BitLinear, grad_input_int8=False, grad_weight_int8=False):
    """x -> the kernels' BitLinear on the layer's tensors (its codes made fresh), plus its bias."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        o, norm = layer.options, layer.norm
        codes, gamma = ternarize(layer.weight, o.gamma_multiplier, o.granularity == "channel")
        norm_weight, eps = (None, 0.0) if norm is None else (norm.weight, norm.eps)
        y = bitlinear(
            x, layer.weight, codes, gamma, None, norm_weight, eps, grad_input_int8, grad_weight_int8
        )
        return y if layer.bias is None else y + layer.bias

    return forward


def _x(shape=(3, 5, 48), seed=1) -> torch.Tensor:
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 2).requires_grad_(True)


def _run(fn, layer, x, seed=2):
    """Output and gradients (x, then each parameter) for a fixed random output gradient."""
    y = fn(x)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.dtype)
    params = [p for p in layer.parameters()]
    return y, torch.autograd.grad(y, [x, *params], grad)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("bias", [False, True])
def test_equals_reference_layer_fp32(granularity, norm, bias):
    layer, x = _layer(granularity=granularity, norm=norm, bias=bias, gamma_multiplier=1.3), _x()
    y_ref, g_ref = _run(layer, layer, x)
    y, g = _run(_fused(layer), layer, x)
    assert y.dtype == y_ref.dtype == torch.float32
    assert rel_err(y, y_ref) < 1e-6  # the fast product is exact; the reference rounds in fp32
    for a, b in zip(g, g_ref, strict=True):
        assert rel_err(a, b) < 1e-5


def test_equals_reference_under_bf16_autocast():
    layer, x = _layer(), _x()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref, g_ref = _run(layer, layer, x)
        y, g = _run(_fused(layer), layer, x)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    assert rel_err(y, y_ref) < 1e-2
    for a, b in zip(g, g_ref, strict=True):
        assert a.dtype == b.dtype and rel_err(a, b) < 2e-2


@pytest.mark.parametrize("grad_input_int8, grad_weight_int8", [(True, False), (False, True), (True, True)])
def test_int8_backward_options_stay_close(grad_input_int8, grad_weight_int8):
    layer, x = _layer(in_f=64, out_f=64), _x((4, 16, 64))
    y_ref, g_ref = _run(layer, layer, x)
    y, g = _run(_fused(layer, grad_input_int8, grad_weight_int8), layer, x)
    assert rel_err(y, y_ref) < 1e-6  # the forward does not change
    dx, dw, dnorm = g
    assert rel_err(dx, g_ref[0]) < (3e-2 if grad_input_int8 else 1e-5)
    assert rel_err(dnorm, g_ref[2]) < (3e-2 if grad_input_int8 else 1e-5)
    assert rel_err(dw, g_ref[1]) < (3e-2 if grad_weight_int8 else 1e-5)


def test_saves_int8_codes_not_float_activations():
    layer, x = _layer(norm=False), _x()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        _fused(layer)(x)
    activations = [t for t in saved if t.shape == (15, 48)]
    assert [t.dtype for t in activations] == [torch.int8]


def test_frozen_weight_gets_no_gradient():
    layer, x = _layer(), _x()
    layer.weight.requires_grad_(False)
    _fused(layer)(x).sum().backward()
    assert layer.weight.grad is None and x.grad is not None and layer.norm.weight.grad is not None


def _op_cases():
    g = torch.Generator().manual_seed(0)
    x, nw = torch.randn(6, 40, generator=g), torch.rand(40, generator=g) + 0.5
    w = torch.randn(24, 40, generator=g) * 0.05
    codes, scale, rstd = ops.rmsnorm_quant(x, nw, 1e-5)
    grad = torch.randn(6, 24, generator=g)
    w_codes, gamma = ops.ternarize(w, 1.0, False)
    return {
        "rmsnorm_quant": (ops.rmsnorm_quant, (x, nw, 1e-5)),
        "rmsnorm_quant_no_norm": (ops.rmsnorm_quant, (x.bfloat16(), None, 1e-5)),
        "rmsnorm_quant_backward": (ops.rmsnorm_quant_backward, (torch.randn_like(x), x, nw, rstd)),
        "ternarize": (ops.ternarize, (w, 1.0, True)),
        "int8_mm": (ops.int8_mm, (codes, codes[:5].contiguous(), scale, None, torch.float32)),
        "int8_mm_pointer": (
            ops.int8_mm,
            (codes, codes[:5].contiguous(), scale, None, torch.float32, "pointer"),
        ),
        "bitlinear_forward": (ops.bitlinear_forward, (x, nw, w_codes, gamma, 1e-5, torch.bfloat16)),
        "bitlinear_forward_no_norm": (ops.bitlinear_forward, (x, None, w_codes, gamma, 1e-5, torch.float32)),
        "bitlinear_forward_pointer": (
            ops.bitlinear_forward,
            (x, nw, w_codes, gamma, 1e-5, torch.float32, "pointer"),
        ),
        "grad_input": (ops.bitlinear_grad_input, (grad, w_codes, gamma, None, False)),
        "grad_input_int8": (ops.bitlinear_grad_input, (grad, w_codes, gamma, None, True)),
        "grad_input_int8_t": (
            ops.bitlinear_grad_input,
            (grad, w_codes, gamma, w_codes.t().contiguous(), True),
        ),
        "grad_weight": (ops.bitlinear_grad_weight, (grad, codes, scale, False, torch.float32)),
        "grad_weight_int8": (ops.bitlinear_grad_weight, (grad, codes, scale, True, torch.float32)),
        "grad_weight_int8_pointer": (
            ops.bitlinear_grad_weight,
            (grad, codes, scale, True, torch.float32, "pointer"),
        ),
        "grad_weight_shared": (
            ops.bitlinear_grad_weight_shared,
            ([grad, grad[:, :7].contiguous()], codes, scale, False, torch.float32),
        ),
        "grad_weight_shared_int8": (
            ops.bitlinear_grad_weight_shared,
            ([grad, grad[:, :7].contiguous()], codes, scale, True, torch.float32),
        ),
    }


@pytest.mark.parametrize("case", list(_op_cases()))
def test_custom_ops_pass_opcheck(case):
    op, args = _op_cases()[case]
    torch.library.opcheck(op, args)


# ---- one norm shared by norm-free layers (the sub-layer placement) ------------------------


def _sublayer_group(layers: int, norm: bool, bias: bool = False, granularity: str = "tensor", seed=0):
    """A shared RMSNorm (or None) and `layers` norm-free BitLinears of different widths reading it."""
    from bittern.nn import RMSNorm

    torch.manual_seed(seed)
    shared = RMSNorm(48) if norm else None
    if shared is not None:
        with torch.no_grad():
            shared.weight.uniform_(0.5, 1.5)
    members = [
        _layer(seed + 1 + i, out_f=40 - 8 * i, norm=False, bias=bias, granularity=granularity)
        for i in range(layers)
    ]
    return shared, members


def _reference_shared(shared, members):
    """The reference path: the RMSNorm module's output in its dtype, then each layer's own quantizer."""

    def forward(x):
        y = x if shared is None else shared(x)
        return [layer(y) for layer in members]

    return forward


def _fused_shared(shared, members, recompute_codes=True, grad_input_int8=False, grad_weight_int8=False):
    from bittern.kernels.function import bitlinear_shared

    def forward(x):
        made = [ternarize(m.weight, 1.0, m.options.granularity == "channel") for m in members]
        ys = bitlinear_shared(
            x,
            [m.weight for m in members],
            [c for c, _ in made],
            [g for _, g in made],
            [None] * len(members),
            None if shared is None else shared.weight,
            0.0 if shared is None else shared.eps,
            grad_input_int8,
            grad_weight_int8,
            recompute_codes,
        )
        return [y if m.bias is None else y + m.bias for m, y in zip(members, ys, strict=True)]

    return forward


def _run_shared(fn, params, x, seed=2):
    """Outputs and gradients (x, then each of `params`) for fixed random output gradients."""
    ys = fn(x)
    g = torch.Generator().manual_seed(seed)
    grads = [torch.randn(y.shape, generator=g).to(y.dtype) for y in ys]
    return ys, torch.autograd.grad(ys, [x, *params], grads)


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("recompute_codes", [True, False])
def test_shared_norm_equals_reference_fp32(layers, norm, recompute_codes):
    if layers == 1 and not norm:
        pytest.skip("one norm-free layer is `bitlinear` itself")
    shared, members = _sublayer_group(layers, norm, bias=True, granularity="channel")
    params = ([] if shared is None else [shared.weight]) + [p for m in members for p in m.parameters()]
    x = _x()
    ys_ref, g_ref = _run_shared(_reference_shared(shared, members), params, x)
    ys, g = _run_shared(_fused_shared(shared, members, recompute_codes), params, x)
    for y, r in zip(ys, ys_ref, strict=True):
        assert y.dtype == r.dtype == torch.float32 and rel_err(y, r) < 1e-6
    for a, b in zip(g, g_ref, strict=True):  # dx, the norm weight's grad, each weight's and bias's
        assert a.dtype == b.dtype and rel_err(a, b) < 1e-5


def test_shared_norm_equals_reference_under_bf16_autocast():
    shared, members = _sublayer_group(3, True)
    params = [shared.weight] + [m.weight for m in members]
    x = _x()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ys_ref, g_ref = _run_shared(_reference_shared(shared, members), params, x)
        ys, g = _run_shared(_fused_shared(shared, members), params, x)
    for y, r in zip(ys, ys_ref, strict=True):
        assert y.dtype == r.dtype == torch.bfloat16 and rel_err(y, r) < 1e-2
    for a, b in zip(g, g_ref, strict=True):
        assert a.dtype == b.dtype and rel_err(a, b) < 2e-2


@pytest.mark.parametrize("grad_input_int8, grad_weight_int8", [(True, False), (False, True)])
def test_shared_norm_int8_backward_options_stay_close(grad_input_int8, grad_weight_int8):
    shared, members = _sublayer_group(3, True)
    params = [shared.weight] + [m.weight for m in members]
    x = _x()
    _, g_ref = _run_shared(_reference_shared(shared, members), params, x)
    _, g = _run_shared(_fused_shared(shared, members, False, grad_input_int8, grad_weight_int8), params, x)
    dx, dnorm, *dws = g
    assert rel_err(dx, g_ref[0]) < (3e-2 if grad_input_int8 else 1e-5)
    assert rel_err(dnorm, g_ref[1]) < (3e-2 if grad_input_int8 else 1e-5)
    for dw, ref in zip(dws, g_ref[2:], strict=True):
        assert rel_err(dw, ref) < (3e-2 if grad_weight_int8 else 1e-5)


def test_shared_norm_unused_output_and_frozen_weight():
    shared, members = _sublayer_group(3, True)
    members[1].weight.requires_grad_(False)
    x = _x()
    ys = _fused_shared(shared, members)(x)
    (ys[0].sum() + ys[2].square().sum()).backward()  # ys[1] unused
    ref_x = x.detach().clone().requires_grad_(True)
    ref_members = [copy.deepcopy(m) for m in members]
    ref_shared = copy.deepcopy(shared)
    for p in [ref_shared.weight, *[m.weight for m in ref_members]]:
        p.grad = None
    r = _reference_shared(ref_shared, ref_members)(ref_x)
    (r[0].sum() + r[2].square().sum()).backward()
    assert members[1].weight.grad is None
    assert rel_err(x.grad, ref_x.grad) < 1e-5 and rel_err(shared.weight.grad, ref_shared.weight.grad) < 1e-5
    for m, ref in zip(members[::2], ref_members[::2], strict=True):
        assert rel_err(m.weight.grad, ref.weight.grad) < 1e-5


def test_shared_norm_quantizes_once_and_saves_no_codes(monkeypatch):
    """One norm + quantize pass forward for all layers; with recompute_codes, x and rstd saved, no codes."""
    from bittern.kernels import actquant

    passes = []
    original = actquant.rmsnorm_quant
    monkeypatch.setattr(actquant, "rmsnorm_quant", lambda *a: passes.append(a[1]) or original(*a))
    dequantized = []
    original_dq = actquant.dequantize_rows
    monkeypatch.setattr(actquant, "dequantize_rows", lambda *a: dequantized.append(1) or original_dq(*a))
    shared, members = _sublayer_group(3, True)
    x = _x()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ys = _fused_shared(shared, members)(x)
    assert len(passes) == 1 and passes[0] is shared.weight
    assert not [t for t in saved if t.dtype == torch.int8 and t.shape == (15, 48)]
    assert [t.dtype for t in saved if t.shape == (15, 48)] == [torch.float32]  # x, once
    sum(y.sum() for y in ys).backward()
    assert len(passes) == 2  # the backward remakes the codes once, for every layer's grad_weight
    assert len(dequantized) == 1  # and dequantizes them once for all three grad_weight GEMMs
    assert shared.weight.grad is not None and all(m.weight.grad is not None for m in members)
