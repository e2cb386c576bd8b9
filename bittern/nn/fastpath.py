"""When a BitLinear runs on the fused kernels, and the layer's own state that path reads.

The fast path computes exactly the reference layer at lambda = 1 (fully quantized), per-tensor
or per-channel weight scale, where `bittern.kernels.available` says the kernels run (a CUDA GPU
with Triton); everything else (the CPU, per-group scales, progressive-quantization blends,
`kernels.enabled = false`) takes the reference path. The decision is made here, from the
layer's attributes:

- `kernel_options` (`KernelOptions`): the switch and the backward options; `configure_fast_path`
  gives every layer of a model one shared instance, so one compiled block serves every block;
- `lambda_is_one` / `lambda_zero`: host records of the lambda buffers. `set_lambda` writes them;
  eager calls re-read the buffers when their version counters moved (one synchronization per
  change of lambda); a compiled graph cannot read them, so it goes by the records;
- `ternary_codes`, `ternary_gamma`, `ternary_codes_t`: the weight's codes, kept between
  optimizer steps and rewritten in place, so a compiled graph that takes them as inputs reads
  the current ones. Eager calls rewrite them when the weight's version counter moved; an
  optimizer step that does not move it (fused AdamW) needs the refresh after `optimizer.step()`
  (`bittern.nn.refresh_ternary_codes`, or the trainer's `CodeRefresher`). With
  `cache_codes=False` (FSDP2, which refills the unsharded weights every step) the forward
  ternarizes the weight itself, inside the graph.

The codes are plain attributes, not buffers: DDP would broadcast buffers before every forward,
`.to(dtype)` would cast gamma, and they are no part of the state dict. A weight moved to another
device or replaced is seen by the next eager call or refresh, which makes the codes anew.
This module imports no Triton; the fused forward imports the kernels on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bittern.kernels.availability import available
from bittern.kernels.coderefresh import CodeSlot, new_codes, rewrite
from bittern.nn.norm import RMSNorm

FAST_GRANULARITIES = ("tensor", "channel")
MAX_IN_FEATURES = 32768  # the fused norm kernel holds one row in registers
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class KernelOptions:
    """How a BitLinear uses the fused kernels (`kernels.*` in the run config, and where codes live)."""

    enabled: bool = True
    grad_input_int8: bool = False  # grad_input on int8 tensor cores (row-wise int8 grad_output)
    grad_weight_int8: bool = False  # grad_weight on int8 tensor cores (column-wise int8 grad_output)
    cache_codes: bool = True  # keep codes between optimizer steps; False (FSDP2): ternarize each forward
    devices: tuple[str, ...] = ("cuda",)  # device types to run on; "cpu" too: Triton's interpreter (tests)
    # the backward makes a normed layer's activation codes again from x (bit-identical) instead of
    # keeping them from the forward: one byte per input element less held, one norm pass more
    recompute_codes: bool = True
    int8_mm: str = "tma"  # the int8 GEMM's kernel on Hopper: "tma", or "pointer" (bittern.kernels.int8_mm)


DEFAULT_OPTIONS = KernelOptions()


def lambdas_are_one(layer: nn.Module) -> bool:
    """Both blend buffers of `layer` are 1 (re-read eagerly if written; recorded under torch.compile)."""
    if not torch.compiler.is_compiling():
        layer.sync_lambda()
    return layer.lambda_is_one


def ready(layer: nn.Module) -> bool:
    """The layer's options and weight are ones the kernels take, here (lambda and input aside)."""
    o, w = layer.kernel_options, layer.weight
    return (
        o.enabled
        and w.device.type in o.devices
        and layer.options.granularity in FAST_GRANULARITIES
        and layer.in_features <= MAX_IN_FEATURES
        and w.is_contiguous()
        and not layer.weight_prequantized  # the kernels would ternarize codes * gamma again
        and available(w.device.type)
    )


def takes_fast_path(layer: nn.Module, x: torch.Tensor) -> bool:
    """Whether BitLinear `layer` runs `x` on the fused kernels (else its reference path)."""
    if x.device.type not in layer.kernel_options.devices or x.dtype not in FLOAT_DTYPES:
        return False
    return ready(layer) and lambdas_are_one(layer)


def keeps_codes(layer: nn.Module) -> bool:
    """The layer keeps its codes between steps: it takes the fast path with `cache_codes` (eager)."""
    return layer.kernel_options.cache_codes and ready(layer) and lambdas_are_one(layer)


# ---- the layer's codes -------------------------------------------------------------------


def _settings(layer: nn.Module) -> tuple[float, bool]:
    o = layer.options
    return o.gamma_multiplier, o.granularity == "channel"


def source(layer: nn.Module) -> tuple[int, int]:
    """What codes made now would be made from: the weight's address and version counter."""
    w = layer.weight
    return (w.data_ptr(), w._version)


def code_slot(layer: nn.Module, transposed: bool) -> CodeSlot:
    """The layer's codes as a `CodeSlot` to rewrite, made first where missing or misshapen."""
    w = layer.weight
    multiplier, per_channel = _settings(layer)
    codes, gamma = layer.ternary_codes, layer.ternary_gamma
    if (
        codes is None
        or codes.shape != w.shape
        or codes.device != w.device
        or gamma.numel() != (w.shape[0] if per_channel else 1)
    ):
        layer.ternary_codes, layer.ternary_gamma, layer.ternary_codes_t = new_codes(
            w, multiplier, per_channel, transposed
        )
        mark_current(layer)
    elif transposed and layer.ternary_codes_t is None:
        layer.ternary_codes_t = codes.t().contiguous()  # as current as the codes; rewritten with them
    return CodeSlot(
        w, layer.ternary_codes, layer.ternary_gamma, layer.ternary_codes_t, multiplier, per_channel
    )


def mark_current(layer: nn.Module) -> None:
    """Record that the layer's codes were just made from its weight, as it is now."""
    # a plain attribute, set as nn.Module.__setattr__ would at its end (it runs once per layer
    # per optimizer step, where Module.__setattr__'s checks cost more than the rest of the refresh)
    object.__setattr__(layer, "ternary_source", source(layer))


def drop_codes(layer: nn.Module) -> None:
    """Forget the layer's codes (it left the fast path; the memory goes back)."""
    if layer.ternary_codes is not None:
        layer.ternary_codes = layer.ternary_gamma = layer.ternary_codes_t = None
        layer.ternary_source = None


def current_codes(layer: nn.Module, transposed: bool) -> None:
    """Make the layer's codes, or rewrite them if the weight was written since (eager calls)."""
    unchanged = layer.ternary_codes is not None and layer.ternary_source == source(layer)
    if unchanged and not (transposed and layer.ternary_codes_t is None):
        return  # a moved or replaced weight has another address: only this check runs per forward
    rewrite_if_written(layer, code_slot(layer, transposed))


def rewrite_if_written(layer: nn.Module, slot: CodeSlot) -> None:
    """Rewrite the layer's codes (`slot`) if its weight was written since they were made."""
    if layer.ternary_source != source(layer):
        rewrite(slot)
        mark_current(layer)


def layer_codes(layer: nn.Module, transposed: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(codes, gamma, codes^T or None) of `layer.weight` for this forward: the kept ones, or fresh."""
    if layer.kernel_options.cache_codes:
        if not torch.compiler.is_compiling():
            current_codes(layer, transposed)  # eagerly they are always kept from here on
        if layer.ternary_codes is not None and not (transposed and layer.ternary_codes_t is None):
            return layer.ternary_codes, layer.ternary_gamma, layer.ternary_codes_t
    from bittern.kernels.function import ternarize  # none kept (FSDP2), or none yet: this graph makes its own

    return (*ternarize(layer.weight, *_settings(layer)), None)


# ---- the fused forwards ------------------------------------------------------------------


def fused_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """BitLinear.forward on the fused kernels (the caller checked `takes_fast_path`)."""
    from bittern.kernels.function import bitlinear

    o, norm = layer.kernel_options, layer.norm
    codes, gamma, codes_t = layer_codes(layer, o.grad_input_int8)
    y = bitlinear(
        x,
        layer.weight,
        codes,
        gamma,
        codes_t,
        None if norm is None else norm.weight,
        0.0 if norm is None else norm.eps,
        o.grad_input_int8,
        o.grad_weight_int8,
        o.recompute_codes,
        o.int8_mm,
    )
    return y if layer.bias is None else y + layer.bias.to(y.dtype)


def group_takes_fast_path(layers: Sequence[nn.Module], x: torch.Tensor) -> bool:
    """Whether BitLinears `layers`, all reading `x`, run on the fused kernels with one shared norm pass.

    2-3 layers, each taking the fast path on its own, each with its RMSNorm (same eps and norm
    dtype), the same kernel options, and no forward hooks other than plain pre-hooks.
    """
    if not 2 <= len(layers) <= 3:
        return False
    first = layers[0]
    if first.norm is None or x.shape[-1] > MAX_IN_FEATURES:
        return False
    for layer in layers:
        if layer.norm is None or layer.norm.eps != first.norm.eps:
            return False
        if layer.norm.weight.dtype != first.norm.weight.dtype:
            return False
        if layer.kernel_options != first.kernel_options or layer._forward_hooks:
            return False
        if layer._forward_pre_hooks_with_kwargs or not takes_fast_path(layer, x):
            return False
    return True


def _fused_call(
    fn, layers: Sequence[nn.Module], x: torch.Tensor, norm_weights, eps: float
) -> list[torch.Tensor]:
    """`fn` (bitlinear_group or bitlinear_shared) on the layers' weights and codes, then each bias."""
    o = layers[0].kernel_options
    codes = [layer_codes(layer, o.grad_input_int8) for layer in layers]
    ys = fn(
        x,
        [layer.weight for layer in layers],
        [c[0] for c in codes],
        [c[1] for c in codes],
        [c[2] for c in codes],
        norm_weights,
        eps,
        o.grad_input_int8,
        o.grad_weight_int8,
        o.recompute_codes,
        o.int8_mm,
    )
    return [
        y if layer.bias is None else y + layer.bias.to(y.dtype) for layer, y in zip(layers, ys, strict=True)
    ]


def fused_forward_group(layers: Sequence[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """Each of `layers` applied to x on the fused kernels (the caller checked `group_takes_fast_path`)."""
    from bittern.kernels.function import bitlinear_group

    return _fused_call(
        bitlinear_group, layers, x, [layer.norm.weight for layer in layers], layers[0].norm.eps
    )


def shared_takes_fast_path(layers: Sequence[nn.Module], norm: nn.Module | None, x: torch.Tensor) -> bool:
    """Whether BitLinears `layers` without norms of their own run on x through `norm` in one shared pass.

    The sub-layer norm placement: `norm` (a `bittern.nn.RMSNorm` without hooks, or None: x is
    quantized as it is) normalizes x once, and its int8 codes feed all 1-3 layers. Each layer
    takes the fast path on its own, with the same kernel options and no forward hooks other
    than plain pre-hooks.
    """
    if not 1 <= len(layers) <= 3 or x.shape[-1] > MAX_IN_FEATURES:
        return False
    if norm is not None:
        if type(norm) is not RMSNorm or norm._forward_hooks or norm._forward_pre_hooks:
            return False
        w = norm.weight
        if w.shape != (x.shape[-1],) or w.device != x.device or w.dtype not in FLOAT_DTYPES:
            return False
    elif len(layers) == 1:
        return False  # one layer on x as it is: the layer's own fused forward
    first = layers[0]
    for layer in layers:
        if layer.norm is not None or layer.kernel_options != first.kernel_options or layer._forward_hooks:
            return False
        if layer._forward_pre_hooks_with_kwargs or not takes_fast_path(layer, x):
            return False
    return True


def fused_forward_shared(
    layers: Sequence[nn.Module], norm: nn.Module | None, x: torch.Tensor
) -> list[torch.Tensor]:
    """Each of `layers` on norm(x), on the fused kernels (the caller checked `shared_takes_fast_path`)."""
    from bittern.kernels.function import bitlinear_shared

    if norm is None:
        return _fused_call(bitlinear_shared, layers, x, None, 0.0)
    return _fused_call(bitlinear_shared, layers, x, norm.weight, norm.eps)


def experts_take_fast_path(layers: Sequence[nn.Module], x: torch.Tensor) -> bool:
    """Whether one projection's BitLinear experts `layers` run on the grouped int8 x ternary kernel.

    Eager only (the kernel is no torch op), at lambda 1, per-tensor or per-channel scales.
    """
    first = layers[0]
    o = first.kernel_options
    if torch.compiler.is_compiling() or not o.enabled or x.device.type not in o.devices:
        return False
    if first.options.granularity not in FAST_GRANULARITIES or first.weight_prequantized:
        return False
    return available(x.device.type) and all(lambdas_are_one(layer) for layer in layers)
