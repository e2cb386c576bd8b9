"""Which path BitLinear takes: the reference on the CPU / when disabled / off lambda = 1, else the kernels."""

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bittern.kernels
import bittern.nn.bitlinear as bitlinear_module
from bittern.config import KernelsConfig
from bittern.kernels import KernelOptions, configure, use_fast_path
from bittern.models import ModelConfig, build_model
from bittern.nn import BitLinear, set_quant_lambda


@pytest.fixture
def calls(monkeypatch):
    """Count the layers that went through the fast path."""
    seen = []
    original = bitlinear_module.fast_forward

    def spy(layer, x):
        seen.append(layer)
        return original(layer, x)

    monkeypatch.setattr(bitlinear_module, "fast_forward", spy)
    return seen


def _model(seed=0, **options) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(BitLinear(32, 48, **options), nn.GELU(), BitLinear(48, 16, **options))


def _x(seed=1):
    return torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(seed))


def test_cpu_takes_the_reference_path(calls):
    model = _model()
    assert configure(model, KernelsConfig()) == 0
    assert not use_fast_path(model[0], _x())
    model(_x()).sum().backward()
    assert calls == []


def test_switches_and_reference_path_need_no_triton(monkeypatch, calls):
    """Where Triton is not installed the trainer's calls into this package work and import no kernel."""
    kernel_modules = [name for name in sys.modules if name == "triton" or name.startswith("triton.")]
    kernel_modules += [name for name in sys.modules if name.startswith("bittern.kernels.")]
    for name in kernel_modules:
        if name not in ("bittern.kernels.dispatch", "bittern.kernels.weightcache"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    model = _model()
    bittern.kernels.set_weight_cache(False)  # what the trainer calls first, on every machine
    bittern.kernels.set_weight_cache(True)
    assert configure(model, KernelsConfig()) == 0
    bittern.kernels.refresh(model)
    model(_x()).sum().backward()
    bittern.kernels.clear_weight_cache()
    assert calls == []
    loaded = {name for name in sys.modules if name.startswith("bittern.kernels.")}
    assert loaded <= {"bittern.kernels.dispatch", "bittern.kernels.weightcache"}


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model(x) on the reference path, leaving the model's kernel options as they were."""
    options = [getattr(m, "_bittern_kernels", None) for m in model.modules()]
    configure(model, KernelsConfig(enabled=False))
    y = model(x)
    for m, o in zip(model.modules(), options, strict=True):
        if o is not None:
            m._bittern_kernels = o
    return y


def test_fast_path_on_cpu_when_forced(fast_on_cpu, calls):
    model = _model()
    assert configure(model, KernelsConfig()) == 2
    y = model(_x())
    assert len(calls) == 2
    torch.testing.assert_close(y, _reference(model, _x()), rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("fast_on_cpu")
def test_disabled_by_config(calls):
    model = _model()
    assert configure(model, KernelsConfig(enabled=False)) == 0
    model(_x())
    assert calls == []
    assert configure(model, KernelOptions(enabled=True)) == 2
    model(_x())
    assert len(calls) == 2


@pytest.mark.usefixtures("fast_on_cpu")
def test_lambda_below_one_takes_the_reference_path(calls):
    model = _model()
    configure(model, KernelsConfig())
    set_quant_lambda(model, 0.5)  # eager calls notice the change by the buffers' version counters
    model(_x())
    assert calls == []
    set_quant_lambda(model, 1.0)
    model(_x())
    assert len(calls) == 2


@pytest.mark.usefixtures("fast_on_cpu")
def test_per_group_scales_take_the_reference_path(calls):
    model = _model(granularity="group", group_size=16)
    assert configure(model, KernelsConfig()) == 0
    model(_x())
    assert calls == []


@pytest.mark.usefixtures("fast_on_cpu")
def test_transformer_fast_path_equals_reference():
    cfg = ModelConfig(
        preset="tiny", vocab_size=64, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=16
    ).resolved()
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    results = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg)
        assert configure(model, KernelsConfig(enabled=enabled)) == (7 if enabled else 0)
        logits = model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (ref_loss, ref_grads), (loss, grads) = results
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-3, atol=1e-6, msg=name)


@pytest.mark.usefixtures("fast_on_cpu")
def test_shared_input_layers_take_one_norm_pass(monkeypatch):
    """q/k/v and gate/up go through `apply_shared`'s fused group; equal to the layer-by-layer path."""
    from bittern.kernels import dispatch
    from bittern.monitor.health import TernaryHealth

    cfg = ModelConfig(
        preset="tiny", vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=16
    ).resolved()
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    groups = []
    original = bitlinear_module.fast_forward_group
    monkeypatch.setattr(
        bitlinear_module,
        "fast_forward_group",
        lambda layers, x: groups.append(len(layers)) or original(layers, x),
    )
    results = []
    for grouped in (True, False):
        monkeypatch.setattr(
            bitlinear_module,
            "use_group_fast_path",
            dispatch.use_group_fast_path if grouped else (lambda layers, x: False),
        )
        torch.manual_seed(0)
        model = build_model(cfg)
        configure(model, KernelsConfig())
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


@pytest.mark.usefixtures("fast_on_cpu")
def test_weights_quantized_once_per_optimizer_step():
    from bittern.kernels.weightcache import WEIGHT_CACHE

    model = _model()
    configure(model, KernelsConfig())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = WEIGHT_CACHE.misses
    for _ in range(2):
        for _ in range(3):  # micro-batches: forward and backward read the cached codes
            model(_x()).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert WEIGHT_CACHE.misses - before == 2 * 2  # two layers, two steps
    torch.testing.assert_close(model(_x()), _reference(model, _x()), rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("fast_on_cpu")
def test_compiles_without_graph_breaks():
    import torch._dynamo.testing

    model = _model()
    configure(model, KernelsConfig())
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
    # the cached codes follow the optimizer's in-place update inside the compiled graph too
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    torch.testing.assert_close(compiled(x), _reference(model, x), rtol=1e-5, atol=1e-6)
    # weights written outside an optimizer step: `refresh` brings the bound codes up to date
    with torch.no_grad():
        model.load_state_dict({k: v * 1.5 for k, v in model.state_dict().items()})
    bittern.kernels.refresh(model)
    torch.testing.assert_close(compiled(x), _reference(model, x), rtol=1e-5, atol=1e-6)
    # set_lambda records lambda < 1 on the host: the compiled model recompiles to the reference path
    set_quant_lambda(model, 0.5)
    torch.testing.assert_close(compiled(x), _reference(model, x), rtol=0, atol=0)
    # lambda written behind set_lambda's back: eager refuses, configure() re-records it
    set_quant_lambda(model, 1.0)
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    for layer in layers:
        layer.weight_lambda.fill_(0.5)
    from bittern.kernels.function import bitlinear_fast

    with pytest.raises(RuntimeError, match="configure"):
        bitlinear_fast(layers[0], x)
    assert configure(model) == 0
    torch.testing.assert_close(compiled(x), _reference(model, x), rtol=0, atol=0)


@pytest.mark.usefixtures("fast_on_cpu")
def test_one_compiled_block_serves_every_block():
    import torch._dynamo.testing

    cfg = ModelConfig(
        preset="tiny", vocab_size=64, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=16
    ).resolved()
    model = build_model(cfg)
    assert configure(model, KernelsConfig()) == 21
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    for block in model.layers:  # regional compilation, as benchmarks/train_throughput.py does
        block.compile(backend=counter, fullgraph=True)
    model(torch.zeros(1, 16, dtype=torch.long)).sum().backward()
    assert counter.frame_count == 1


@pytest.mark.usefixtures("fast_on_cpu")
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
def test_training_equals_reference_step_by_step(make_optimizer):
    """Per-step losses of the fast path equal the reference path's over several optimizer steps."""
    cfg = ModelConfig(
        preset="tiny", vocab_size=64, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=16
    ).resolved()
    curves = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg)
        configure(model, KernelsConfig(enabled=enabled))
        optimizer = make_optimizer(model.parameters())
        tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
        losses = []
        for _ in range(6):  # one batch, memorized: the loss falls fast
            loss = F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        curves.append(torch.tensor(losses))
    ref, fast = curves
    assert ref[0] - ref[-1] > 0.05  # the run learns, so stale codes would show
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=0)
