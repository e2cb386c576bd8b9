"""BitLinear: a drop-in nn.Linear whose forward runs on ternary weights and int8 activations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bittern.nn import fastpath
from bittern.nn.norm import RMSNorm
from bittern.quant.core import GRANULARITIES
from bittern.quant.ste import STE_FORMS, fake_quant_activations, fake_quant_weight

QUANT_MODES = ("ternary", "none")


@dataclass(frozen=True)
class BitLinearOptions:
    """How a BitLinear quantizes; shared by every layer of a model."""

    quant: str = "ternary"
    norm: bool = True
    norm_eps: float = 1e-5
    granularity: str = "tensor"
    group_size: int = 128
    gamma_multiplier: float = 1.0
    ste: str = "detach"

    def __post_init__(self) -> None:
        if self.quant not in QUANT_MODES:
            raise ValueError(f"quant must be one of {QUANT_MODES}, got {self.quant!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}")
        if self.ste not in STE_FORMS:
            raise ValueError(f"ste must be one of {STE_FORMS}")
        if self.gamma_multiplier <= 0:
            raise ValueError("gamma_multiplier must be positive")


class BitLinear(nn.Linear):
    """y = (x_q @ W_q^T) * gamma / s_x, with RMSNorm before the activation quantizer.

    The latent full-precision weight stays at `.weight` and is what the optimizer updates.
    `weight_lambda` / `act_lambda` (0..1) blend full precision into quantized for
    progressive quantization; they are buffers so changing them never recompiles. A lambda of
    0 skips its quantizer altogether, so the full-precision phase of late quantization costs
    what the nn.Linear twin's steps cost (a compiled model recompiles once at that switch).
    With quant="none" it is exactly nn.Linear (no norm, no quantization).
    `weight_prequantized` is set from outside when `.weight`, as the forward sees it, already
    is codes * gamma of the latent weight (FSDP2's packed all-gather gathers it so).

    The fused-kernel path's state is the layer's own (`bittern.nn.fastpath` reads it):
    `kernel_options`, the host records `lambda_is_one` / `lambda_zero` of the lambda buffers, and
    the weight's ternary codes (`ternary_codes`, `ternary_gamma`, `ternary_codes_t`), which
    `bittern.nn.refresh_ternary_codes(model)` rewrites after `optimizer.step()`.
    """

    weight_prequantized: bool = False

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        device=None,
        dtype=None,
        options: BitLinearOptions | None = None,
        **option_overrides,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        opts = options or BitLinearOptions()
        if option_overrides:
            opts = BitLinearOptions(**{**opts.__dict__, **option_overrides})
        if opts.granularity == "group" and in_features % opts.group_size:
            raise ValueError(f"group_size {opts.group_size} must divide in_features {in_features}")
        self.options = opts
        quantized = opts.quant == "ternary"
        self.norm = RMSNorm(in_features, opts.norm_eps) if quantized and opts.norm else None
        if self.norm is not None:
            self.norm.to(device=device, dtype=dtype)
        self.register_buffer("weight_lambda", torch.ones((), device=device), persistent=False)
        self.register_buffer("act_lambda", torch.ones((), device=device), persistent=False)
        self.kernel_options = fastpath.DEFAULT_OPTIONS
        self.lambda_is_one = True  # host records of the lambda buffers (set_lambda, sync_lambda)
        self.lambda_zero = (False, False)  # (weight lambda == 0, act lambda == 0)
        self._lambda_seen = self._lambda_versions()
        self.ternary_codes: torch.Tensor | None = None  # the fast path's codes of `weight` (int8)
        self.ternary_gamma: torch.Tensor | None = None  # their scale, float32 (1,) or (out,)
        self.ternary_codes_t: torch.Tensor | None = None  # the codes transposed (int8 grad_input)
        self.ternary_source: tuple | None = None  # what they were made from (fastpath.source)

    @property
    def quantized(self) -> bool:
        return self.options.quant == "ternary"

    def quantized_weight(self) -> torch.Tensor:
        """The (blended) weight the forward multiplies by, straight-through to `.weight`."""
        if self.weight_prequantized:  # identity, hence the straight-through gradient; lambda is 1
            assert self.lambda_is_one, "a pre-quantized weight cannot blend in full precision"
            return self.weight
        o = self.options
        return fake_quant_weight(
            self.weight, self.weight_lambda, o.granularity, o.group_size, o.gamma_multiplier, o.ste
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantized:
            return F.linear(x, self.weight, self.bias)
        if fastpath.takes_fast_path(self, x):  # fused Triton kernels on CUDA (bittern.nn.fastpath says when)
            return fastpath.fused_forward(self, x)
        if self.norm is not None:
            x = self.norm(x)
        weight_zero, act_zero = self._lambdas_zero()
        xq = x if act_zero else fake_quant_activations(x, self.act_lambda, self.options.ste)
        w = self.weight if weight_zero else self.quantized_weight()
        return F.linear(xq, w.to(xq.dtype), self.bias)

    def _lambdas_zero(self) -> tuple[bool, bool]:
        """(weight lambda == 0, act lambda == 0): x + 0 * (q(x) - x) is x, so the quantizer is skipped.

        Eager calls re-read the buffers if written since; a compiled graph goes by the records.
        """
        if not torch.compiler.is_compiling():
            self.sync_lambda()
        return self.lambda_zero

    def _lambda_versions(self) -> tuple[int, ...]:
        w, a = self.weight_lambda, self.act_lambda
        return (w.data_ptr(), w._version, a.data_ptr(), a._version)

    def _record_lambda(self, weight: float, act: float) -> None:
        self.lambda_is_one = weight == 1.0 and act == 1.0  # what a compiled model goes by
        self.lambda_zero = (weight == 0.0, act == 0.0)
        self._lambda_seen = self._lambda_versions()

    def sync_lambda(self) -> None:
        """Re-read the lambda buffers into the host records if they were written since the last read.

        One host synchronization per change of lambda (eager calls do this themselves; a
        compiled model whose buffers were written other than by `set_lambda` needs
        `bittern.nn.configure_fast_path` again).
        """
        if self._lambda_seen != self._lambda_versions():
            weight, act = torch.stack((self.weight_lambda.float(), self.act_lambda.float())).tolist()
            self._record_lambda(weight, act)

    def set_lambda(self, weight: float, act: float | None = None) -> None:
        """Set the progressive-quantization blend (1 = fully quantized)."""
        act = weight if act is None else act
        for value in (weight, act):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"lambda must be in [0, 1], got {value}")
        self.weight_lambda.fill_(weight)
        self.act_lambda.fill_(act)
        self._record_lambda(weight, act)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "norm", None) is not None:
            nn.init.ones_(self.norm.weight)

    def extra_repr(self) -> str:
        o = self.options
        s = super().extra_repr() + f", quant={o.quant}"
        if self.quantized:
            s += f", granularity={o.granularity}, norm={o.norm}"
            if not math.isclose(o.gamma_multiplier, 1.0):
                s += f", gamma_multiplier={o.gamma_multiplier}"
        return s


def _no_global_hooks() -> bool:
    return not (nn.modules.module._global_forward_pre_hooks or nn.modules.module._global_forward_hooks)


def _run_pre_hooks(layers: Sequence[nn.Module], inputs) -> None:
    """The layers' forward pre-hooks, as a call would run them on `inputs()` (made only if needed)."""
    if not any(layer._forward_pre_hooks for layer in layers):
        return
    x = inputs()
    for layer in layers:
        for hook in layer._forward_pre_hooks.values():
            if hook(layer, (x,)) is not None:
                raise RuntimeError(f"a forward pre-hook of {layer!r} replaced its input: unsupported here")


@torch.no_grad()
def _watched(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """norm(x) for pre-hooks to watch: outside autograd (under torch.compile, gone if unread)."""
    return norm(x)


def apply_shared(
    layers: Sequence[nn.Module], x: torch.Tensor, norm: nn.Module | None = None
) -> list[torch.Tensor]:
    """[layer(norm(x)) for layer in layers] (norm(x) once; x itself without `norm`), for layers
    that read the same input (q/k/v, gate/up; or one layer after its sub-norm).

    On the fused path the normalization and int8 quantization of the shared input run once,
    forward and backward: BitLinears with their own norms (placement "inside") share one pass
    over norm(x) (`bittern.kernels.sharednorm`); BitLinears without (placement "sublayer", or
    `norm` None) read one set of int8 codes of norm(x), made by one fused RMSNorm + quantize
    pass (`bittern.kernels.function.bitlinear_shared`), the norm module's forward never run.
    Packed layers grouped by `bittern.nn.packed_linear.fuse_packed` run as their group (one
    kernel launch; only without global hooks). Anything else (the twin, lambda below 1, the
    reference path) is norm(x), then layer by layer. The layers' forward pre-hooks run as a
    call would run them, on norm(x) (they may watch, not replace, the input; a norm pass of its
    own is made for them, none without hooks).
    """
    quantized = all(isinstance(layer, BitLinear) and layer.quantized for layer in layers)
    if quantized and _no_global_hooks() and fastpath.shared_takes_fast_path(layers, norm, x):
        _run_pre_hooks(layers, lambda: x if norm is None else _watched(norm, x))
        return fastpath.fused_forward_shared(layers, norm, x)
    if norm is not None:
        x = norm(x)
    if getattr(type(layers[0]), "groupable", False):  # a class flag: no instance lookup on other layers
        group = layers[0].shared_group
        if group is not None and _no_global_hooks() and group.serves(layers):
            return group(x)
    if quantized and _no_global_hooks() and fastpath.group_takes_fast_path(layers, x):
        _run_pre_hooks(layers, lambda: x)
        return fastpath.fused_forward_group(layers, x)
    return [layer(x) for layer in layers]
