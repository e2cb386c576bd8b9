"""The fast path's codes belong to each layer and are refreshed by one explicit call after a step.

No hook is registered when bittern loads, no cache is shared between models, and after
`optimizer.step()` plus `refresh_ternary_codes(model)` every layer's codes are its weight's.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from bittern.nn import BitLinear, CodeRefresher, KernelOptions, configure_fast_path, refresh_ternary_codes
from bittern.quant.core import ternarize

ROOT = Path(__file__).resolve().parents[2]
IMPORT_ALL = """
import torch.optim.optimizer as optimizer
from torch.nn.modules import module
import bittern, bittern.nn, bittern.models, bittern.train.trainer
import bittern.kernels.function, bittern.kernels.ops
hooks = [optimizer._global_optimizer_pre_hooks, optimizer._global_optimizer_post_hooks]
hooks += [module._global_forward_hooks, module._global_forward_pre_hooks, module._global_backward_hooks]
print(sum(len(h) for h in hooks))
"""


def _model(seed: int, granularity: str = "tensor") -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(BitLinear(32, 48, granularity=granularity), nn.GELU(), BitLinear(48, 16))


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(seed))


def _layers(model: nn.Module) -> list[BitLinear]:
    return [m for m in model.modules() if isinstance(m, BitLinear)]


def _assert_codes_are_the_weights(layer: BitLinear) -> None:
    codes, gamma = ternarize(layer.weight.detach(), layer.options.granularity)
    assert torch.equal(layer.ternary_codes, codes)
    torch.testing.assert_close(layer.ternary_gamma, gamma.reshape(-1), rtol=1e-6, atol=0)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model(_x()).square().sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_importing_bittern_registers_no_hooks():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split()[-1] == "0"


def test_after_a_step_the_documented_refresh_makes_codes_the_weights(cpu_kernels):
    model = _model(0, granularity="channel")
    assert configure_fast_path(model, cpu_kernels) == 2
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)  # no version-counter bumps
    for _ in range(2):
        _train_step(model, optimizer)
        refresh_ternary_codes(model)
        for layer in _layers(model):
            _assert_codes_are_the_weights(layer)


def test_two_models_keep_their_own_codes(cpu_kernels):
    a, b = _model(0), _model(1)
    for model in (a, b):
        configure_fast_path(model, cpu_kernels)
        model(_x())
    before_b = [layer.ternary_codes.clone() for layer in _layers(b)]
    _train_step(a, torch.optim.AdamW(a.parameters(), lr=0.1, fused=True))
    CodeRefresher(a).refresh()
    for layer, old in zip(_layers(b), before_b, strict=True):
        assert torch.equal(layer.ternary_codes, old)  # b's codes did not move with a's step
        _assert_codes_are_the_weights(layer)
    for layer_a, layer_b in zip(_layers(a), _layers(b), strict=True):
        _assert_codes_are_the_weights(layer_a)
        assert layer_a.ternary_codes.data_ptr() != layer_b.ternary_codes.data_ptr()


def test_refresher_follows_layers_onto_and_off_the_fast_path(cpu_kernels):
    model = _model(0)
    configure_fast_path(model, KernelOptions(grad_input_int8=True, devices=cpu_kernels.devices))
    refresher = CodeRefresher(model)
    first, second = _layers(model)
    assert torch.equal(first.ternary_codes_t, first.ternary_codes.t())
    first.set_lambda(0.5)  # off the fast path: its codes are dropped
    refresher.refresh()
    assert first.ternary_codes is None and second.ternary_codes is not None
    first.set_lambda(1.0)
    with torch.no_grad():
        first.weight.mul_(-2.0)
    refresher.refresh()  # back on: made anew from the weight as it is now
    _assert_codes_are_the_weights(first)
    assert torch.equal(first.ternary_codes_t, first.ternary_codes.t())


def test_sync_sees_weights_written_outside_a_step(cpu_kernels):
    model = _model(0)
    configure_fast_path(model, cpu_kernels)
    codes = [layer.ternary_codes for layer in _layers(model)]
    with torch.no_grad():
        model.load_state_dict({k: -v for k, v in model.state_dict().items()})
    CodeRefresher(model).sync()
    for layer, kept in zip(_layers(model), codes, strict=True):
        assert layer.ternary_codes is kept  # rewritten in place: a compiled graph reads them
        _assert_codes_are_the_weights(layer)


def test_codes_keep_out_of_state_dicts_and_buffers(cpu_kernels):
    model = _model(0)
    configure_fast_path(model, cpu_kernels)
    assert _layers(model)[0].ternary_codes is not None
    assert not any("ternary" in name for name in model.state_dict())
    assert not any("ternary" in name for name, _ in model.named_buffers())  # DDP broadcasts buffers


def test_cache_off_keeps_no_codes_and_ternarizes_every_forward(cpu_kernels):
    model = _model(0)
    off = KernelOptions(cache_codes=False, devices=cpu_kernels.devices)
    assert configure_fast_path(model, off) == 2
    y = model(_x())
    assert all(layer.ternary_codes is None for layer in _layers(model))
    with torch.no_grad():
        model[0].weight.data.neg_()  # as FSDP2 refills its unsharded weights: no version bump
    reference = _model(0)
    reference.load_state_dict(model.state_dict())
    configure_fast_path(reference, KernelOptions(enabled=False))
    torch.testing.assert_close(model(_x()), reference(_x()), rtol=1e-5, atol=1e-6)
    assert not torch.equal(model(_x()), y)
