"""BitLinear against the integer computation of docs/design.md (section 1), and its STE gradients."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bittern.nn import BitLinear, BitLinearOptions, set_quant_lambda

EPS = 1e-5


def ref_rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float = EPS) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight, in float32 like the layer."""
    x = x.astype(np.float32)
    return (x / np.sqrt((x * x).mean(-1, keepdims=True) + np.float32(eps)) * weight).astype(np.float32)


def ref_act_codes(x: np.ndarray):
    amax = np.maximum(np.abs(x).max(-1, keepdims=True), np.float32(EPS))
    s = np.float32(127) / amax
    return np.clip(np.rint(x * s), -128, 127).astype(np.int64), s.astype(np.float64)


def ref_weight_codes(w: np.ndarray, granularity: str, group_size: int = 0):
    """Ternary codes (int64) and gamma: () per tensor, (out, 1) per channel, (out, G) per group."""
    w = w.astype(np.float64)
    if granularity == "tensor":
        gamma = max(np.abs(w).mean(), EPS)
    elif granularity == "channel":
        gamma = np.maximum(np.abs(w).mean(1, keepdims=True), EPS)
    else:
        out_f, in_f = w.shape
        gamma = np.maximum(np.abs(w.reshape(out_f, -1, group_size)).mean(2), EPS)
        codes = np.clip(np.rint(w.reshape(out_f, -1, group_size) / gamma[..., None]), -1, 1)
        return codes.reshape(out_f, in_f).astype(np.int64), gamma
    return np.clip(np.rint(w / gamma), -1, 1).astype(np.int64), gamma


def integer_reference(layer: BitLinear, x: torch.Tensor, norm: bool) -> np.ndarray:
    """y = (x_q @ W_q^T) * gamma / s_x with an exact int64 matmul (per group: summed per group)."""
    o = layer.options
    xn = x.detach().numpy().astype(np.float32)
    lead = xn.shape[:-1]
    xn = xn.reshape(-1, xn.shape[-1])
    if norm:
        xn = ref_rmsnorm(xn, layer.norm.weight.detach().numpy())
    xq, s = ref_act_codes(xn)
    wq, gamma = ref_weight_codes(layer.weight.detach().numpy(), o.granularity, o.group_size)
    if o.granularity == "group":
        g = o.group_size
        y = np.zeros((xq.shape[0], wq.shape[0]))
        for k in range(wq.shape[1] // g):
            acc = xq[:, k * g : (k + 1) * g] @ wq[:, k * g : (k + 1) * g].T  # int64, exact
            y += acc * gamma[:, k][None, :]
        y = y / s
    elif o.granularity == "channel":
        y = (xq @ wq.T) * gamma.T / s
    else:
        y = (xq @ wq.T) * gamma / s
    if layer.bias is not None:
        y = y + layer.bias.detach().double().numpy()
    return y.reshape(*lead, -1)


def _layer(in_f=32, out_f=12, seed=0, **kw) -> BitLinear:
    torch.manual_seed(seed)
    layer = BitLinear(in_f, out_f, **kw)
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.05)
        if layer.bias is not None:
            layer.bias.normal_(0.0, 0.1)
        if layer.norm is not None:
            layer.norm.weight.uniform_(0.5, 1.5)
    return layer


def _x(shape=(6, 32), seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 2.0


def _assert_close_to(y: torch.Tensor, ref: np.ndarray):
    scale = np.abs(ref).max()
    np.testing.assert_allclose(y.detach().double().numpy(), ref, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("granularity,group_size", [("tensor", 128), ("channel", 128), ("group", 8)])
def test_forward_equals_integer_computation(norm, bias, granularity, group_size):
    layer = _layer(bias=bias, norm=norm, granularity=granularity, group_size=group_size)
    assert (layer.norm is not None) == norm
    x = _x()
    with torch.no_grad():
        y = layer(x)
    assert y.shape == (6, 12) and y.dtype == torch.float32
    _assert_close_to(y, integer_reference(layer, x, norm))


def test_forward_small_inputs_norm_eps():
    layer = _layer(norm=True)
    x = _x() * 2e-3  # mean(x^2) ~ 1.6e-5: the 1e-5 eps visibly shapes the normalised input
    with torch.no_grad():
        _assert_close_to(layer(x), integer_reference(layer, x, True))


def test_forward_rounds_half_to_even_at_exact_ties():
    # activations: max 127 -> s = 1, so x * s is exactly 0.5, 1.5, 2.5, -0.5, -2.5, ...
    # weights: mean|W| = 1 -> W / gamma is exactly 0.5, -0.5, 1.5, -1.5, ...
    layer = BitLinear(8, 3, norm=False)
    with torch.no_grad():
        layer.weight.copy_(
            torch.tensor(
                [
                    [0.5, -0.5, 1.5, -1.5, 1.0, -1.0, 1.0, 1.0],
                    [1.0, 0.5, 0.5, 1.0, 1.5, 1.5, 1.0, 1.0],
                    [-0.5, 1.5, -1.0, 0.5, 2.0, 1.0, 1.5, 0.0],
                ]
            )
        )
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 3.5, 4.5]])
    with torch.no_grad():
        y = layer(x)
    # half-even codes: x_q = [127, 0, 2, 2, 0, -2, 4, 4]; W_q rows below; gamma = 1, s = 1
    x_q = np.array([127, 0, 2, 2, 0, -2, 4, 4])
    w_q = np.array(
        [
            [0, 0, 1, -1, 1, -1, 1, 1],
            [1, 0, 0, 1, 1, 1, 1, 1],
            [0, 1, -1, 0, 1, 1, 1, 0],
        ]
    )
    assert y.tolist() == [(w_q @ x_q).astype(float).tolist()]
    _assert_close_to(y, integer_reference(layer, x, False))


def test_forward_3d_input_quantizes_per_token():
    layer = _layer(norm=True)
    x = _x((2, 5, 32))
    x[1, 3] *= 100.0  # one loud token must not change the others' scales
    with torch.no_grad():
        y = layer(x)
    assert y.shape == (2, 5, 12)
    _assert_close_to(y, integer_reference(layer, x, True))
    with torch.no_grad():
        torch.testing.assert_close(y[0], layer(x[0]))


def test_forward_output_is_not_the_full_precision_linear():
    layer = _layer(norm=False)
    x = _x()
    with torch.no_grad():
        assert not torch.allclose(layer(x), F.linear(x, layer.weight), atol=1e-3)


@pytest.mark.parametrize("bias", [False, True])
def test_ste_gradients_without_norm(bias):
    layer = _layer(bias=bias, norm=False)
    x = _x().requires_grad_()
    g = torch.randn(6, 12, generator=torch.Generator().manual_seed(3))
    (layer(x) * g).sum().backward()

    wq, gamma = ref_weight_codes(layer.weight.detach().numpy(), "tensor")
    w_deq = wq * gamma
    xq, s = ref_act_codes(x.detach().numpy())
    x_deq = xq / s
    gn = g.double().numpy()
    # y = x_deq @ w_deq^T; d/dx_deq and d/dW_deq pass straight through the quantizers
    np.testing.assert_allclose(x.grad.double().numpy(), gn @ w_deq, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.weight.grad.double().numpy(), gn.T @ x_deq, rtol=1e-5, atol=1e-5)
    if bias:
        np.testing.assert_allclose(layer.bias.grad.numpy(), gn.sum(0), rtol=1e-5, atol=1e-6)


def test_ste_gradients_with_norm_match_explicit_detach_reference():
    layer = _layer(norm=True)
    x = _x((2, 3, 32)).requires_grad_()
    g = torch.randn(2, 3, 12, generator=torch.Generator().manual_seed(4))
    (layer(x) * g).sum().backward()

    w = layer.weight.detach().clone().requires_grad_()
    nw = layer.norm.weight.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    xn = xr * torch.rsqrt(xr.pow(2).mean(-1, keepdim=True) + EPS) * nw
    s = 127.0 / xn.detach().abs().amax(-1, keepdim=True).clamp(min=EPS)
    x_ste = xn + ((xn * s).round().clamp(-128, 127) / s - xn).detach()
    gamma = w.detach().abs().mean().clamp(min=EPS)
    w_ste = w + ((w / gamma).round().clamp(-1, 1) * gamma - w).detach()
    y_ref = x_ste @ w_ste.T
    (y_ref * g).sum().backward()

    torch.testing.assert_close(layer(x).detach(), y_ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, w.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.norm.weight.grad, nw.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("lam", [1.0, 0.5])
@pytest.mark.parametrize("norm", [True, False])
def test_detach_and_function_ste_forms_identical(lam, norm):
    results = []
    for ste in ("detach", "function"):
        layer = _layer(bias=True, norm=norm, ste=ste)
        layer.set_lambda(lam)
        x = _x().requires_grad_()
        y = layer(x)
        y.pow(2).sum().backward()
        grads = [x.grad, layer.weight.grad, layer.bias.grad]
        if norm:
            grads.append(layer.norm.weight.grad)
        results.append((y.detach(), grads))
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert torch.equal(a, b)


def test_lambda_zero_is_exactly_full_precision_linear():
    layer = _layer(bias=True, norm=False)
    layer.set_lambda(0.0)
    x = _x().requires_grad_()
    y = layer(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(7))
    (y * g).sum().backward()

    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    y_ref = F.linear(xr, w, b)
    (y_ref * g).sum().backward()
    assert torch.equal(y, y_ref)
    assert torch.equal(x.grad, xr.grad)
    assert torch.equal(layer.weight.grad, w.grad)
    assert torch.equal(layer.bias.grad, b.grad)


def test_lambda_half_blends_weight_and_activations_by_hand():
    layer = _layer(norm=False)
    x = _x()
    wq, gamma = ref_weight_codes(layer.weight.detach().numpy(), "tensor")
    w = layer.weight.detach().double().numpy()
    w_eff = w + 0.5 * (wq * gamma - w)
    xq, s = ref_act_codes(x.numpy())
    xd = x.double().numpy()
    x_eff = xd + 0.5 * (xq / s - xd)
    layer.set_lambda(0.5)
    with torch.no_grad():
        _assert_close_to(layer(x), x_eff @ w_eff.T)
        # weight blended, activations fully quantized
        layer.set_lambda(0.5, act=1.0)
        _assert_close_to(layer(x), (xq / s) @ w_eff.T)
        torch.testing.assert_close(
            layer.quantized_weight(), torch.from_numpy(w_eff).float(), rtol=1e-6, atol=1e-7
        )


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_set_lambda_rejects_out_of_range(bad):
    layer = _layer()
    with pytest.raises(ValueError):
        layer.set_lambda(bad)
    with pytest.raises(ValueError):
        layer.set_lambda(0.5, act=bad)
    model = nn.Sequential(_layer(), _layer(in_f=12, out_f=4))
    with pytest.raises(ValueError):
        set_quant_lambda(model, bad)


def test_rejected_set_lambda_leaves_layer_unchanged():
    layer = _layer()
    with pytest.raises(ValueError):
        layer.set_lambda(0.25, act=2.0)
    assert layer.weight_lambda.item() == 1.0
    assert layer.act_lambda.item() == 1.0


def test_set_quant_lambda_reaches_every_layer():
    model = nn.Sequential(_layer(), nn.ReLU(), _layer(in_f=12, out_f=4))
    set_quant_lambda(model, 0.25, act=0.75)
    for layer in (model[0], model[2]):
        assert layer.weight_lambda.item() == 0.25 and layer.act_lambda.item() == 0.75


@pytest.mark.parametrize("bias", [False, True])
def test_quant_none_is_exactly_nn_linear(bias):
    torch.manual_seed(0)
    ref = nn.Linear(32, 12, bias=bias)
    layer = BitLinear(32, 12, bias=bias, quant="none")
    assert layer.norm is None
    assert set(layer.state_dict()) == set(ref.state_dict())
    layer.load_state_dict(ref.state_dict())  # strict
    x = _x((2, 3, 32)).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    y, y_ref = layer(x), ref(xr)
    assert torch.equal(y, y_ref)
    y.sum().backward()
    y_ref.sum().backward()
    assert torch.equal(x.grad, xr.grad) and torch.equal(layer.weight.grad, ref.weight.grad)


def test_drop_in_for_nn_linear():
    torch.manual_seed(0)
    ref = nn.Linear(32, 12, bias=True)
    layer = BitLinear(32, 12, bias=True)
    assert isinstance(layer, nn.Linear)
    assert layer.weight.shape == (12, 32) and layer.bias.shape == (12,)
    assert (layer.in_features, layer.out_features) == (32, 12)
    # the norm inside BitLinear adds one key; an nn.Linear state dict lacks only that one
    assert set(layer.state_dict()) == set(ref.state_dict()) | {"norm.weight"}
    with pytest.raises(RuntimeError):
        layer.load_state_dict(ref.state_dict())
    result = layer.load_state_dict(ref.state_dict(), strict=False)
    assert result.missing_keys == ["norm.weight"] and result.unexpected_keys == []
    assert torch.equal(layer.weight, ref.weight) and torch.equal(layer.bias, ref.bias)
    assert torch.equal(layer.norm.weight, torch.ones(32))
    # without the inside norm the state dicts match exactly
    plain = BitLinear(32, 12, bias=True, norm=False)
    plain.load_state_dict(ref.state_dict())
    assert torch.equal(plain.weight, ref.weight)
    # lambdas are not persistent: they belong to the schedule, not the checkpoint
    assert "weight_lambda" not in layer.state_dict()


def test_latent_weight_is_the_trained_parameter():
    layer = _layer(norm=False)
    params = dict(layer.named_parameters())
    assert set(params) == {"weight"}
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = layer.weight.detach().clone()
    layer(_x()).pow(2).sum().backward()
    opt.step()
    assert not torch.equal(layer.weight, before)
    assert layer.weight.dtype == torch.float32  # latent weights stay full precision


@pytest.mark.parametrize(
    "kw",
    [
        dict(quant="int4"),
        dict(granularity="row"),
        dict(ste="magic"),
        dict(gamma_multiplier=0.0),
        dict(granularity="group", group_size=5),
    ],
)
def test_bad_options_rejected(kw):
    with pytest.raises(ValueError):
        BitLinear(32, 12, **kw)


def test_options_object_and_overrides():
    opts = BitLinearOptions(granularity="channel", norm=False)
    layer = BitLinear(32, 12, options=opts, gamma_multiplier=2.0)
    assert layer.options.granularity == "channel"
    assert layer.options.norm is False and layer.norm is None
    assert layer.options.gamma_multiplier == 2.0
    assert opts.gamma_multiplier == 1.0  # the shared options object is not mutated


@pytest.mark.parametrize("bias", [False, True])
def test_low_precision_dtype_is_kept(bias):
    layer = BitLinear(32, 12, bias=bias, dtype=torch.bfloat16)
    x = _x().bfloat16()
    assert layer.norm.weight.dtype == torch.bfloat16
    assert layer(x).dtype == torch.bfloat16


def test_model_cast_to_bfloat16_runs():
    layer = _layer(bias=True).to(torch.bfloat16)
    y = layer(_x().bfloat16())
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
