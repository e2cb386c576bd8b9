"""Ternary health: how the codes, scales and activation clipping of every BitLinear evolve.

Per layer (`health/<layer>/<stat>`) and overall (`health/<stat>`, the parameter-weighted mean):

- `zero_frac`: fraction of ternary codes that are 0.
- `flip_frac`: fraction of codes that changed since the baseline (the previous snapshot, or
  `set_baseline`); absent until there is one.
- `gamma_drift`: |gamma - gamma_prev| / gamma_prev of the layer's mean scale, same baseline.
- `weight_clip_frac`: fraction of latent weights the ternary clamp cuts, round(|W / gamma|) > 1
  (|W / gamma| > 1.5).
- `act_clip_frac`: fraction of int8 activation codes at the limits (|code| >= 127), from the
  layer's (normed) input in the last armed forward pass; absent if none since the last snapshot.

Flip tracking keeps the baseline codes on the weight's device as int8: one byte per quantized
weight (about 1 GB for a 1B-parameter model); `track_flips=False` drops it.

Under FSDP2 every rank gathers each layer's whole weight in turn (one layer at a time), so the
stats are those of the whole weight, equal on every rank; every rank must take the snapshot.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.hooks import RemovableHandle

from bittern.monitor.metrics import MetricsLogger
from bittern.nn import BitLinear, bitlinear_layers
from bittern.quant import ACT_QMAX, quantize_activations, ternarize

HISTOGRAM_MAX_VALUES = 65536


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP / torch.compile wrappers, so layer names match the plain model."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def full_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's whole latent weight: FSDP2's shards all-gathered (a collective: every rank calls it)."""
    w = layer.weight.detach()
    return w.full_tensor() if isinstance(w, DTensor) else w


def _clip_count(w: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """How many weights the ternary clamp cuts; gamma in any shape `ternarize` returns."""
    wf = w.detach().float()
    if gamma.dim() == 3:
        wf = wf.reshape(gamma.shape[0], gamma.shape[1], -1)
    return ((wf / gamma).abs().round() > 1).sum()


def _weighted_means(per_layer: dict[str, dict[str, float]], sizes: dict[str, int]) -> dict[str, float]:
    """Each stat averaged over the layers that have it, weighted by parameter count."""
    totals: dict[str, list[float]] = {}
    for name, stats in per_layer.items():
        for key, value in stats.items():
            acc = totals.setdefault(key, [0.0, 0.0])
            acc[0] += value * sizes[name]
            acc[1] += sizes[name]
    return {key: s / n for key, (s, n) in totals.items()}


# Per-layer state lives on the layer, read by one module-level hook: under per-block
# torch.compile every block then runs the same code with the same guards (a hook closing over
# the layer's name would specialize, and recompile, each block).
ARMED = "_bittern_health_armed"  # capture this layer's activation clipping in its next forward
CAPTURED = "_bittern_act_clip"  # (clipped count, total) from the last armed forward


def _capture_hook(layer: BitLinear, args: tuple) -> None:
    """A pre-hook that costs one attribute read unless armed."""
    if getattr(layer, ARMED, False):
        _capture(layer, args[0])


@torch.no_grad()
def _capture(layer: BitLinear, x: torch.Tensor) -> None:
    """Count the int8 activation codes at the limits for the input this layer quantizes.

    torch.compile traces this into the armed variant of the graph (no graph break).
    """
    setattr(layer, ARMED, False)
    if layer.norm is not None:
        x = layer.norm(x)
    codes, _ = quantize_activations(x)
    clipped = ((codes >= ACT_QMAX) | (codes <= -ACT_QMAX)).sum()
    setattr(layer, CAPTURED, (clipped, codes.numel()))


class TernaryHealth:
    """Tracks the quantized BitLinear layers of a model between snapshots (see module docstring)."""

    def __init__(self, per_layer: bool = True, track_flips: bool = True) -> None:
        self.per_layer = per_layer
        self.track_flips = track_flips
        self._codes: dict[str, torch.Tensor] = {}
        self._gamma: dict[str, torch.Tensor] = {}
        self._layers: list[BitLinear] = []
        self._handles: list[RemovableHandle] = []

    def attach(self, model: nn.Module) -> TernaryHealth:
        """Register the (disarmed) activation hooks on every quantized BitLinear of `model`."""
        self.detach()
        for _, layer in bitlinear_layers(unwrap(model)):
            setattr(layer, ARMED, False)
            self._handles.append(layer.register_forward_pre_hook(_capture_hook))
            self._layers.append(layer)
        return self

    def detach(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        for layer in self._layers:
            setattr(layer, ARMED, False)
            layer.__dict__.pop(CAPTURED, None)
        self._handles, self._layers = [], []

    def arm(self) -> None:
        """Capture activation clipping in the next forward pass of each layer (then disarm)."""
        for layer in self._layers:
            setattr(layer, ARMED, True)

    @property
    def armed(self) -> bool:
        return any(getattr(layer, ARMED) for layer in self._layers)

    @torch.no_grad()
    def set_baseline(self, model: nn.Module) -> None:
        """Record the current codes and scales, so the next snapshot's flips/drift cover only what follows.

        Called right before an optimizer step, it makes flip_frac and gamma_drift per-step figures.
        """
        for name, layer in bitlinear_layers(unwrap(model)):
            o = layer.options
            w = full_weight(layer)
            codes, gamma = ternarize(w, o.granularity, o.group_size, o.gamma_multiplier)
            self._remember(name, codes, gamma.mean())

    def _remember(self, name: str, codes: torch.Tensor, gamma: torch.Tensor) -> None:
        if self.track_flips:
            self._codes[name] = codes
        self._gamma[name] = gamma

    def _layer_stats(self, name: str, layer: BitLinear) -> dict[str, torch.Tensor]:
        """A layer's stats as 0-dim tensors on its device (no host sync); updates the baseline."""
        o = layer.options
        w = full_weight(layer)
        codes, gamma = ternarize(w, o.granularity, o.group_size, o.gamma_multiplier)
        n = codes.numel()
        g = gamma.mean()
        stats = {
            "zero_frac": (codes == 0).sum() / n,
            "weight_clip_frac": _clip_count(w, gamma) / n,
        }
        prev = self._codes.get(name)
        if prev is not None and prev.shape == codes.shape:
            stats["flip_frac"] = (codes != prev).sum() / n
        if name in self._gamma:
            stats["gamma_drift"] = (g - self._gamma[name]).abs() / self._gamma[name]
        captured = layer.__dict__.pop(CAPTURED, None)
        if captured is not None:
            clipped, total = captured
            stats["act_clip_frac"] = clipped / total
        self._remember(name, codes, g)
        return stats

    @torch.no_grad()
    def snapshot(self, model: nn.Module) -> dict[str, float]:
        """All health stats, per layer and overall, as `health/...` keys; one host sync."""
        layers = bitlinear_layers(unwrap(model))
        tensors = {name: self._layer_stats(name, layer) for name, layer in layers}
        flat = [v.float().reshape(()) for stats in tensors.values() for v in stats.values()]
        values = iter(torch.stack(flat).tolist() if flat else [])
        per_layer = {name: {k: next(values) for k in stats} for name, stats in tensors.items()}
        sizes = {name: layer.weight.numel() for name, layer in layers}
        out = {f"health/{k}": v for k, v in _weighted_means(per_layer, sizes).items()}
        if self.per_layer:
            out |= {f"health/{name}/{k}": v for name, stats in per_layer.items() for k, v in stats.items()}
        return out


def _subsample(t: torch.Tensor, max_values: int) -> torch.Tensor:
    """At most `max_values` entries of `t`, an evenly strided (deterministic) view."""
    flat = t.detach().reshape(-1)
    return flat[:: max(1, math.ceil(flat.numel() / max_values))]


def log_weight_histograms(
    logger: MetricsLogger, step: int, model: nn.Module, max_values: int = HISTOGRAM_MAX_VALUES
) -> None:
    """TensorBoard histograms (`weights/<layer>`) of every quantized BitLinear's latent weight."""
    for name, layer in bitlinear_layers(unwrap(model)):
        logger.histogram(step, f"weights/{name}", _subsample(full_weight(layer), max_values))
