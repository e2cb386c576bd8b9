"""convert(): swap nn.Linear for BitLinear in any module, copying the weights."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import torch
from torch import nn

from bittern.nn.bitlinear import BitLinear, BitLinearOptions

DEFAULT_HEAD_NAMES = ("lm_head", "output", "head")


def _output_head_names(model: nn.Module) -> set[str]:
    """Names of the output projection: whatever get_output_embeddings() returns, else by name."""
    names = set()
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    for name, module in model.named_modules():
        if head is not None and module is head:
            names.add(name)
        if name.split(".")[-1] in DEFAULT_HEAD_NAMES and name.count(".") == 0:
            names.add(name)
    return names


def _excluded(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or fnmatch.fnmatch(name, p) or name.endswith("." + p) for p in patterns)


def convert(
    model: nn.Module,
    quant: str = "ternary",
    exclude: Iterable[str] = (),
    keep_head: bool = True,
    options: BitLinearOptions | None = None,
    **option_overrides,
) -> nn.Module:
    """Replace every nn.Linear in `model` (in place) by a BitLinear with the same weights.

    The output head stays full precision unless `keep_head=False`; `exclude` takes module
    names or glob patterns (e.g. "model.layers.0.*") to leave alone. Returns `model`.
    """
    opts = options or BitLinearOptions()
    opts = BitLinearOptions(**{**opts.__dict__, "quant": quant, **option_overrides})
    skip = set(_output_head_names(model)) if keep_head else set()
    exclude = tuple(exclude)
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and not isinstance(m, BitLinear)
        and name not in skip
        and not _excluded(name, exclude)
    ]
    for name, linear in targets:
        new = BitLinear(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            options=opts,
        )
        with torch.no_grad():
            new.weight.copy_(linear.weight)
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        new.train(linear.training)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return model


def bitlinear_layers(model: nn.Module) -> list[tuple[str, BitLinear]]:
    """Every quantized BitLinear in `model`, with its name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BitLinear) and m.quantized]


def set_quant_lambda(model: nn.Module, weight: float, act: float | None = None) -> None:
    """Set the progressive-quantization blend on every BitLinear of `model`."""
    for _, layer in bitlinear_layers(model):
        layer.set_lambda(weight, act)
