"""Which path BitLinear takes: the reference on the CPU / when disabled / off lambda = 1, else the kernels.

The fused path runs here on CPU tensors under Triton's interpreter, through the layers' own
`KernelOptions(devices=("cuda", "cpu"))` (the `cpu_kernels` fixture).
"""

import copy
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bittern.models import ModelConfig, build_model
from bittern.nn import (
    BitLinear,
    CodeRefresher,
    KernelOptions,
    configure_fast_path,
    fastpath,
    refresh_ternary_codes,
    set_quant_lambda,
)

TINY = dict(preset="tiny", vocab_size=64, dim=32, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=16)


@pytest.fixture
def calls(monkeypatch):
    """Count the layers that went through the fast path."""
    seen = []
    original = fastpath.fused_forward

    def spy(layer, x):
        seen.append(layer)
        return original(layer, x)

    monkeypatch.setattr(fastpath, "fused_forward", spy)
    return seen


def _model(seed=0, **options) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(BitLinear(32, 48, **options), nn.GELU(), BitLinear(48, 16, **options))


def _x(seed=1):
    return torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(seed))


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model(x) on the reference path, computed by a copy (the model itself is left as it is)."""
    ref = copy.deepcopy(model)
    configure_fast_path(ref, KernelOptions(enabled=False))
    return ref(x)


def test_cpu_takes_the_reference_path(calls):
    model = _model()
    assert configure_fast_path(model, KernelOptions()) == 0  # "cuda" only, the default
    assert not fastpath.takes_fast_path(model[0], _x())
    model(_x()).sum().backward()
    assert calls == [] and model[0].ternary_codes is None


def test_switches_and_reference_path_need_no_triton(monkeypatch, calls):
    """Where Triton is not installed the trainer's calls into the fast path work and import no kernel."""
    keep = ("bittern.kernels.availability", "bittern.kernels.coderefresh")
    kernel_modules = [name for name in sys.modules if name == "triton" or name.startswith("triton.")]
    kernel_modules += [name for name in sys.modules if name.startswith("bittern.kernels.")]
    for name in kernel_modules:
        if name not in keep:
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    model = _model()
    assert configure_fast_path(model, KernelOptions(cache_codes=False)) == 0
    assert configure_fast_path(model, KernelOptions()) == 0
    refresher = CodeRefresher(model)
    refresher.sync()
    model(_x()).sum().backward()
    refresher.refresh()
    refresh_ternary_codes(model)
    assert calls == []
    loaded = {name for name in sys.modules if name.startswith("bittern.kernels.")}
    assert loaded <= set(keep)


def test_fast_path_on_cpu_when_asked(cpu_kernels, calls):
    model = _model()
    assert configure_fast_path(model, cpu_kernels) == 2
    y = model(_x())
    assert len(calls) == 2
    torch.testing.assert_close(y, _reference(model, _x()), rtol=1e-5, atol=1e-6)


def test_disabled_by_options(cpu_kernels, calls):
    model = _model()
    assert configure_fast_path(model, KernelOptions(enabled=False, devices=cpu_kernels.devices)) == 0
    model(_x())
    assert calls == []
    assert configure_fast_path(model, cpu_kernels) == 2
    model(_x())
    assert len(calls) == 2


def test_lambda_below_one_takes_the_reference_path(cpu_kernels, calls):
    model = _model()
    configure_fast_path(model, cpu_kernels)
    set_quant_lambda(model, 0.5)
    model(_x())
    assert calls == []
    set_quant_lambda(model, 1.0)
    model(_x())
    assert len(calls) == 2
    for layer in (model[0], model[2]):  # written behind set_lambda's back: the version counters tell
        layer.act_lambda.fill_(0.25)
    torch.testing.assert_close(model(_x()), _reference(model, _x()), rtol=0, atol=0)
    assert len(calls) == 2 and not model[0].lambda_is_one


def test_per_group_scales_take_the_reference_path(cpu_kernels, calls):
    model = _model(granularity="group", group_size=16)
    assert configure_fast_path(model, cpu_kernels) == 0
    model(_x())
    assert calls == []


def test_transformer_fast_path_equals_reference(cpu_kernels):
    cfg = ModelConfig(n_layers=1, **TINY).resolved()
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    results = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg)
        options = KernelOptions(enabled=enabled, devices=cpu_kernels.devices)
        assert configure_fast_path(model, options) == (7 if enabled else 0)
        logits = model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (ref_loss, ref_grads), (loss, grads) = results
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-3, atol=1e-6, msg=name)


def test_shared_input_layers_take_one_norm_pass(cpu_kernels, monkeypatch):
    """q/k/v and gate/up go through `apply_shared`'s fused group; equal to the layer-by-layer path."""
    from bittern.monitor.health import TernaryHealth

    cfg = ModelConfig(n_layers=2, **TINY).resolved()
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    groups = []
    original_forward, original_check = fastpath.fused_forward_group, fastpath.group_takes_fast_path
    monkeypatch.setattr(
        fastpath,
        "fused_forward_group",
        lambda layers, x: groups.append(len(layers)) or original_forward(layers, x),
    )
    results = []
    for grouped in (True, False):
        monkeypatch.setattr(
            fastpath, "group_takes_fast_path", original_check if grouped else (lambda layers, x: False)
        )
        torch.manual_seed(0)
        model = build_model(cfg)
        configure_fast_path(model, cpu_kernels)
        health = TernaryHealth().attach(model)  # its pre-hooks run in the group path too
        health.arm()
        logits = model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
        loss.backward()
        stats = health.snapshot(model)
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}, stats))
    assert groups == [3, 2, 3, 2]  # two blocks: q/k/v, then gate/up
    (loss, grads, stats), (ref_loss, ref_grads, ref_stats) = results
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    for name, grad in grads.items():  # dx summed in float32 once instead of three roundings
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert stats.keys() == ref_stats.keys() and any(k.endswith("q_proj/act_clip_frac") for k in stats)
    assert stats == pytest.approx(ref_stats)


def test_weights_quantized_once_per_optimizer_step(cpu_kernels, monkeypatch):
    from bittern.kernels import weightquant

    made = []
    original = weightquant.ternarize_weight
    monkeypatch.setattr(weightquant, "ternarize_weight", lambda *a, **k: made.append(1) or original(*a, **k))
    model = _model()
    configure_fast_path(model, cpu_kernels)
    refresher = CodeRefresher(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    made.clear()
    for _ in range(2):
        for _ in range(3):  # micro-batches: forward and backward read the kept codes
            model(_x()).square().sum().backward()
        optimizer.step()
        refresher.refresh()
        optimizer.zero_grad()
    assert len(made) == 2 * 2  # two layers, two steps
    torch.testing.assert_close(model(_x()), _reference(model, _x()), rtol=1e-5, atol=1e-6)
    assert len(made) == 4


def test_compiles_without_graph_breaks(cpu_kernels):
    import torch._dynamo.testing

    model = _model()
    configure_fast_path(model, cpu_kernels)
    x = _x()
    y = model(x)
    y.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    y_c = compiled(x)
    y_c.square().sum().backward()
    assert counter.frame_count == 1
    torch.testing.assert_close(y_c, y, rtol=0, atol=0)
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)
    # the refresh after the optimizer step rewrites the codes the compiled graph reads, in place
    refresher = CodeRefresher(model)
    torch.optim.AdamW(model.parameters(), lr=0.5, fused=True).step()
    refresher.refresh()
    torch.testing.assert_close(compiled(x), _reference(model, x), rtol=1e-5, atol=1e-6)
    # weights written outside an optimizer step: `sync` finds them by their version counters
    with torch.no_grad():
        model.load_state_dict({k: v * 1.5 for k, v in model.state_dict().items()})
    refresher.sync()
    torch.testing.assert_close(compiled(x), _reference(model, x), rtol=1e-5, atol=1e-6)
    assert counter.frame_count == 1
    # set_lambda records lambda < 1 on the host: the compiled model recompiles to the reference path
    set_quant_lambda(model, 0.5)
    torch.testing.assert_close(compiled(x), _reference(model, x), rtol=0, atol=0)
    # lambda written behind set_lambda's back: configure_fast_path records it for compiled graphs
    set_quant_lambda(model, 1.0)
    for layer in (model[0], model[2]):
        layer.weight_lambda.fill_(0.5)
    assert configure_fast_path(model) == 0
    torch.testing.assert_close(compiled(x), _reference(model, x), rtol=0, atol=0)


def test_one_compiled_block_serves_every_block(cpu_kernels):
    import torch._dynamo.testing

    model = build_model(ModelConfig(n_layers=3, **TINY).resolved())
    assert configure_fast_path(model, cpu_kernels) == 21
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    for block in model.layers:  # regional compilation, as the trainer does
        block.compile(backend=counter, fullgraph=True)
    model(torch.zeros(1, 16, dtype=torch.long)).sum().backward()
    assert counter.frame_count == 1


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.SGD(params, lr=0.5),
        lambda params: torch.optim.AdamW(params, lr=1e-2, foreach=True),
        # fused AdamW (the trainer's on CUDA) writes weights without moving their version counters
        lambda params: torch.optim.AdamW(params, lr=1e-2, fused=True),
    ],
    ids=["sgd", "adamw-foreach", "adamw-fused"],
)
def test_training_equals_reference_step_by_step(cpu_kernels, make_optimizer):
    """Per-step losses of the fast path equal the reference path's over several optimizer steps."""
    cfg = ModelConfig(n_layers=1, **TINY).resolved()
    curves = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg)
        configure_fast_path(model, KernelOptions(enabled=enabled, devices=cpu_kernels.devices))
        optimizer = make_optimizer(model.parameters())
        tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
        losses = []
        for _ in range(6):  # one batch, memorized: the loss falls fast
            loss = F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
            loss.backward()
            optimizer.step()
            refresh_ternary_codes(model)  # the documented call after every optimizer step
            optimizer.zero_grad()
            losses.append(loss.item())
        curves.append(torch.tensor(losses))
    ref, fast = curves
    assert ref[0] - ref[-1] > 0.05  # the run learns, so stale codes would show
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=0)


# ---- the sub-layer norm placement: each norm fused with its quantization, once ----------------

SUBLAYER = dict(TINY, norm_placement="sublayer")


def _sublayer_model(n_layers=1, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(n_layers=n_layers, **SUBLAYER).resolved())
    with torch.no_grad():  # norm weights off 1, so their gradients and their use both show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def _loss_and_grads(model, tokens):
    loss = F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("recompute_codes", [True, False])
def test_sublayer_transformer_fast_path_equals_reference(cpu_kernels, monkeypatch, recompute_codes):
    """Every projection reads its norm's int8 codes made in one fused pass; equal to the reference path."""
    shared = []
    original = fastpath.fused_forward_shared
    monkeypatch.setattr(
        fastpath, "fused_forward_shared", lambda ls, n, x: shared.append(len(ls)) or original(ls, n, x)
    )
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    results = []
    for enabled in (False, True):
        model = _sublayer_model()
        options = KernelOptions(enabled=enabled, devices=cpu_kernels.devices, recompute_codes=recompute_codes)
        assert configure_fast_path(model, options) == (7 if enabled else 0)
        results.append(_loss_and_grads(model, tokens))
    assert shared == [3, 1, 2, 1]  # q/k/v, o_proj, gate/up, down_proj: the four norms of the block
    (ref_loss, ref_grads), (loss, grads) = results
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    assert any(name.endswith("attn_sub_norm.weight") for name in grads)
    for name, grad in grads.items():  # the norm weights' gradients included
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-3, atol=1e-6, msg=name)


@pytest.mark.parametrize("placement", ["inside", "sublayer"])
def test_int8_mm_kernel_choice_reaches_every_gemm(cpu_kernels, monkeypatch, placement):
    """`KernelOptions.int8_mm` is the kernel every int8 GEMM of the fused forward and backward is given."""
    from bittern.kernels import ops

    kernels = []
    original = ops._int8_mm

    def spy(*args, kernel, **kwargs):
        kernels.append(kernel)
        return original(*args, kernel=kernel, **kwargs)

    monkeypatch.setattr(ops, "_int8_mm", spy)
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layers=1, **dict(TINY, norm_placement=placement)).resolved())
    options = KernelOptions(
        devices=cpu_kernels.devices, grad_input_int8=True, grad_weight_int8=True, int8_mm="pointer"
    )
    assert configure_fast_path(model, options) == 7
    _loss_and_grads(model, torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0)))
    assert kernels == ["pointer"] * (3 * 7)  # each layer's forward, grad_input and grad_weight GEMMs


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_sublayer_lambda_below_one_runs_the_reference_math(cpu_kernels, monkeypatch, lam):
    monkeypatch.setattr(fastpath, "fused_forward_shared", None)  # would fail if called
    monkeypatch.setattr(fastpath, "fused_forward", None)
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    results = []
    for enabled in (False, True):
        model = _sublayer_model()
        configure_fast_path(model, KernelOptions(enabled=enabled, devices=cpu_kernels.devices))
        set_quant_lambda(model, lam)
        results.append(_loss_and_grads(model, tokens))
    (ref_loss, ref_grads), (loss, grads) = results
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=0, atol=0, msg=name)


def _norm_passes(model, tokens) -> tuple[list[str], int]:
    """(the bittern ops a forward ran that normalize or quantize activations, aten rsqrt calls)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    quantizing = ("rmsnorm_quant", "rmsnorm_quant_group", "bitlinear_forward", "bitlinear_group_forward")
    seen, rsqrt = [], []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func._schema.name
            if name.startswith("bittern::") and name.split("::")[1] in quantizing:
                seen.append(name.split("::")[1])
            elif func.overloadpacket is torch.ops.aten.rsqrt:
                rsqrt.append(name)
            return func(*args, **(kwargs or {}))

    with Count():
        model(tokens)
    return seen, len(rsqrt)


def test_sublayer_block_runs_four_norm_quantize_passes(cpu_kernels):
    """A sub-layer block's forward: 4 fused RMSNorm + int8 passes, and no RMSNorm of its own (was 4 + 7)."""
    model = _sublayer_model(n_layers=2)
    configure_fast_path(model, cpu_kernels)
    tokens = torch.zeros(1, 16, dtype=torch.long)
    seen, rsqrt = _norm_passes(model, tokens)
    assert seen == ["rmsnorm_quant"] * 4 * 2  # two blocks
    assert rsqrt == 1  # the final norm before the head only
    configure_fast_path(model, KernelOptions(enabled=False))
    seen, rsqrt = _norm_passes(model, tokens)  # the reference: the norm modules run, no kernels
    assert seen == [] and rsqrt == 4 * 2 + 1


def test_sublayer_health_hooks_see_the_normed_input(cpu_kernels):
    """Pre-hooks of layers fed by a fused norm watch norm(x), as on the reference path."""
    from bittern.monitor.health import TernaryHealth

    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    results = []
    for enabled in (False, True):
        model = _sublayer_model()
        configure_fast_path(model, KernelOptions(enabled=enabled, devices=cpu_kernels.devices))
        health = TernaryHealth().attach(model)
        health.arm()
        loss, grads = _loss_and_grads(model, tokens)
        results.append((loss, grads, health.snapshot(model)))
    (ref_loss, ref_grads, ref_stats), (loss, grads, stats) = results
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-3, atol=1e-6, msg=name)
    assert any(k.endswith("q_proj/act_clip_frac") for k in stats)
    assert stats == pytest.approx(ref_stats)


def test_sublayer_compiled_block_serves_every_block(cpu_kernels):
    import torch._dynamo.testing

    model = _sublayer_model(n_layers=3)
    assert configure_fast_path(model, cpu_kernels) == 21
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    loss, grads = _loss_and_grads(model, tokens)
    model.zero_grad()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    for block in model.layers:
        block.compile(backend=counter, fullgraph=True)
    compiled_loss, compiled_grads = _loss_and_grads(model, tokens)
    assert counter.frame_count == 1
    torch.testing.assert_close(compiled_loss, loss, rtol=0, atol=0)
    for name, grad in compiled_grads.items():
        torch.testing.assert_close(grad, grads[name], rtol=0, atol=0, msg=name)
