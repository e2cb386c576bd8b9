"""When BitLinear takes the fused-kernel path, and the switch the trainer turns (`configure`).

The fast path computes exactly the reference layer at lambda = 1 (fully quantized), per-tensor
or per-channel weight scale, on a CUDA device with Triton; everything else (the CPU, per-group
scales, progressive-quantization blends, `kernels.enabled = false`) takes the reference path.

Whether lambda is 1 lives on the device (the `weight_lambda` / `act_lambda` buffers). Eager
calls read it on the host only when a buffer's version counter has moved since the last read
(one synchronization per change of lambda). A compiled model cannot do that inside its graph,
so it uses the answer last recorded on the layer: by `BitLinear.set_lambda` (the way the
trainer and `set_quant_lambda` change lambda) or by `configure`. A compiled model whose lambda
buffers were written some other way needs `configure` again.

The fast path's weight codes are cached (`WeightCache`) and bound to each layer (`CODES_ATTR`),
where a compiled graph reads them; `refresh` re-checks them against the weights.

This module imports neither Triton nor the kernels; `fast_forward` imports them on first use.
The cache's bookkeeping (`bittern.kernels.weightcache`) imports no Triton either, so the
switches here work on a machine without it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef

from bittern.errors import BitternError

OPTIONS_ATTR = "_bittern_kernels"  # KernelOptions set on a BitLinear by `configure`
LAMBDA_ATTR = "_bittern_lambda_is_one"  # host-side record of "both lambdas are 1"
CODES_ATTR = "_bittern_codes"  # (codes, gamma, codes^T or None) of the weight, from the cache
FAST_GRANULARITIES = ("tensor", "channel")
MAX_IN_FEATURES = 32768  # the fused norm kernel holds one row in registers
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FAST_DEVICE_TYPES = ("cuda",)  # tests add "cpu" to run the path under Triton's interpreter


@dataclass(frozen=True)
class KernelOptions:
    """Per-layer switch of the fused kernels (`kernels.*` in the run config)."""

    enabled: bool = True
    grad_input_int8: bool = False  # grad_input on int8 tensor cores (row-wise int8 grad_output)
    grad_weight_int8: bool = False  # grad_weight on int8 tensor cores (column-wise int8 grad_output)


DEFAULT_OPTIONS = KernelOptions()
_available: bool | None = None


def fast_path_available() -> bool:
    """Triton is installed, a CUDA GPU with int8 tensor cores (sm_80+) is there, not interpreting."""
    global _available
    if _available is None:
        _available = False
        if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0):
            try:
                import triton

                if not triton.knobs.runtime.interpret:
                    from bittern.kernels import function  # noqa: F401  (registers the custom ops)

                    _available = True
            except ImportError:
                pass
            except BitternError:  # a setting of the user's (BITTERN_INT8_MM): reported, not worked around
                raise
            except Exception as e:  # a Triton or torch version the kernels do not load on
                warnings.warn(f"bittern.kernels unavailable, using the reference path: {e!r}", stacklevel=2)
    return _available


class HostScalars:
    """Host copies of device scalars, re-read only when the tensor's version counter moves."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[StorageWeakRef, int, int, float]] = {}

    def value(self, t: torch.Tensor) -> float:
        """float(t) for a one-element tensor, synchronizing only on the first read after a write."""
        storage = t.untyped_storage()
        key = storage._cdata
        seen = self._seen.get(key)
        if seen is None or seen[0].expired() or seen[1] != t._version or seen[2] != t.storage_offset():
            if len(self._seen) > 4096:
                self._seen = {k: v for k, v in self._seen.items() if not v[0].expired()}
            seen = (StorageWeakRef(storage), t._version, t.storage_offset(), float(t))
            self._seen[key] = seen
        return seen[3]


HOST_SCALARS = HostScalars()


def lambdas_are_one(layer: nn.Module) -> bool:
    """Both blend buffers of `layer` are 1; under torch.compile, what was last recorded."""
    if torch.compiler.is_compiling():
        return getattr(layer, LAMBDA_ATTR, False)
    one = HOST_SCALARS.value(layer.weight_lambda) == 1.0 and HOST_SCALARS.value(layer.act_lambda) == 1.0
    setattr(layer, LAMBDA_ATTR, one)
    return one


def use_fast_path(layer: nn.Module, x: torch.Tensor) -> bool:
    """Whether BitLinear `layer` runs `x` on the fused kernels (else its reference path)."""
    if x.device.type not in FAST_DEVICE_TYPES or x.dtype not in FLOAT_DTYPES:
        return False
    if layer.in_features > MAX_IN_FEATURES or not _fast_capable(layer):
        return False
    if torch.compiler.is_compiling():
        if not _available:  # decided eagerly, by `configure` or an earlier eager call
            return False
    elif not fast_path_available():
        return False
    return lambdas_are_one(layer)


def fast_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """BitLinear.forward on the fused kernels (the caller checked `use_fast_path`)."""
    from bittern.kernels.function import bitlinear_fast

    opts = getattr(layer, OPTIONS_ATTR, DEFAULT_OPTIONS)
    return bitlinear_fast(layer, x, opts.grad_input_int8, opts.grad_weight_int8)


def use_group_fast_path(layers, x: torch.Tensor) -> bool:
    """Whether BitLinears `layers`, all reading `x`, run on the fused kernels with one shared norm pass.

    2-3 layers, each taking the fast path on its own, each with its RMSNorm (same eps and norm
    dtype), the same kernel options, and no forward hooks other than plain pre-hooks.
    """
    if not 2 <= len(layers) <= 3:
        return False
    first = layers[0]
    if first.norm is None or x.shape[-1] > MAX_IN_FEATURES:
        return False
    opts = getattr(first, OPTIONS_ATTR, DEFAULT_OPTIONS)
    for layer in layers:
        if layer.norm is None or layer.norm.eps != first.norm.eps:
            return False
        if layer.norm.weight.dtype != first.norm.weight.dtype:
            return False
        if getattr(layer, OPTIONS_ATTR, DEFAULT_OPTIONS) != opts or layer._forward_hooks:
            return False
        if layer._forward_pre_hooks_with_kwargs or not use_fast_path(layer, x):
            return False
    return True


def fast_forward_group(layers, x: torch.Tensor) -> list[torch.Tensor]:
    """Each of `layers` applied to x on the fused kernels (the caller checked `use_group_fast_path`)."""
    from bittern.kernels.function import bitlinear_group_fast

    opts = getattr(layers[0], OPTIONS_ATTR, DEFAULT_OPTIONS)
    return bitlinear_group_fast(list(layers), x, opts.grad_input_int8, opts.grad_weight_int8)


def configure(model: nn.Module, cfg=None) -> int:
    """Apply `cfg` (a KernelsConfig or KernelOptions; None keeps each layer's) to every BitLinear.

    Also records, for torch.compile, whether each layer's lambda is 1: call it once the
    model is built and on its device, and again after changing lambda if the model runs
    compiled. Returns how many layers will take the fast path.
    """
    layers = _quantized_layers(model)
    available = fast_path_available()
    # one instance shared by every layer: one compiled block then serves all blocks
    shared = None if cfg is None else KernelOptions(cfg.enabled, cfg.grad_input_int8, cfg.grad_weight_int8)
    fast = 0
    for layer in layers:
        if shared is not None:
            setattr(layer, OPTIONS_ATTR, shared)
        one = lambdas_are_one(layer)
        fast += bool(available and _fast_capable(layer) and one)
    refresh(model)
    return fast


def _quantized_layers(model: nn.Module) -> list[nn.Module]:
    from bittern.nn.bitlinear import BitLinear

    return [m for m in model.modules() if isinstance(m, BitLinear) and m.quantized]


def _fast_capable(layer: nn.Module) -> bool:
    """The fast path is on for `layer` and its weight is one the kernels take (lambda aside)."""
    return (
        getattr(layer, OPTIONS_ATTR, DEFAULT_OPTIONS).enabled
        and layer.weight.device.type in FAST_DEVICE_TYPES
        and layer.options.granularity in FAST_GRANULARITIES
        and layer.weight.is_contiguous()
        and not layer.weight_prequantized  # the kernels would ternarize codes * gamma again
    )


def refresh(model: nn.Module) -> None:
    """Check every fast-path layer's cached ternary codes against its weight and bind them.

    Eager calls do this themselves; a compiled model reads the bound codes, which optimizer
    steps refresh. After writing the weights of a compiled model any other way
    (`load_state_dict`, a rollback), call this before the next forward (the trainer calls it
    before every step).
    """
    if not fast_path_available():
        return
    from bittern.kernels.function import weight_codes
    from bittern.kernels.weightcache import WEIGHT_CACHE

    if not WEIGHT_CACHE.enabled:
        return
    for layer in _quantized_layers(model):
        if _fast_capable(layer) and getattr(layer, LAMBDA_ATTR, False):
            weight_codes(layer, getattr(layer, OPTIONS_ATTR, DEFAULT_OPTIONS).grad_input_int8)


def set_weight_cache(enabled: bool) -> None:
    """Cache ternary weights across micro-batches (default) or re-quantize on every call.

    Off under FSDP2: it refills each block's unsharded weights in place every step.
    """
    from bittern.kernels.weightcache import WEIGHT_CACHE

    WEIGHT_CACHE.enabled = enabled
    WEIGHT_CACHE.clear()


def clear_weight_cache() -> None:
    """Forget every cached ternary weight (after writing weights through `.data`, say)."""
    from bittern.kernels.weightcache import WEIGHT_CACHE

    WEIGHT_CACHE.clear()
