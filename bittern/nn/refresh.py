"""A model's fast path as a whole: its options, and the refresh of its ternary codes after a step.

BitLinear keeps its weight's codes between optimizer steps (`bittern.nn.fastpath`). An optimizer
writes the weights in place, and a fused one (AdamW `fused=True`, the trainer's choice on CUDA)
does so without moving their version counters, so nothing in the layer can see it: whoever
steps the optimizer refreshes the codes, in one call after `optimizer.step()`, as torchao's
`precompute_bitnet_scale_for_fsdp` does for its scales:

    loss.backward()
    optimizer.step()
    bittern.nn.refresh_ternary_codes(model)

A training loop holds a `CodeRefresher(model)` instead: the same refresh, replayed as one CUDA
graph once the layers settle (`bittern.kernels.coderefresh`). Weights written any other way
(`load_state_dict`, a rollback) are seen by the weights' version counters: eagerly by the next
forward, for a compiled model by `CodeRefresher.sync()` (the trainer's step calls it first).
"""

from __future__ import annotations

from torch import nn

from bittern.kernels.coderefresh import CodeSlot, GraphedRewrite
from bittern.nn import fastpath
from bittern.nn.bitlinear import BitLinear
from bittern.nn.fastpath import KernelOptions


def _quantized(model: nn.Module) -> list[BitLinear]:
    return [m for m in model.modules() if isinstance(m, BitLinear) and m.quantized]


def configure_fast_path(model: nn.Module, options: KernelOptions | None = None) -> int:
    """Give every BitLinear of `model` `options` (None keeps each layer's), record its lambda, refresh codes.

    Call it once the model is on its device, and again if a compiled model's lambda buffers were
    written other than through `set_lambda`. Returns how many layers take the fast path.
    """
    fast = 0
    for layer in _quantized(model):
        if options is not None:
            layer.kernel_options = options  # one instance for all: one compiled block serves all blocks
        layer.sync_lambda()
        fast += fastpath.ready(layer) and layer.lambda_is_one
    refresh_ternary_codes(model)
    return fast


class CodeRefresher:
    """Keeps the ternary codes of `model`'s fast-path layers current; owned by whoever steps the optimizer.

    `refresh()` after every `optimizer.step()` rewrites them all in place, recorded as a CUDA
    graph once the same layers came twice (`graphs=False`: always eagerly). `sync()` rewrites
    only those whose weight was written since (its version counter moved: a load, a rollback),
    for a compiled model that cannot check. Layers that left the fast path (lambda below 1) drop
    their codes; those that joined it get theirs. The layers that keep codes are chosen again
    only when a layer's options, lambda record, weight address or codes changed, so a step costs
    one cheap look at each layer on the host.
    """

    def __init__(self, model: nn.Module, graphs: bool = True) -> None:
        self.layers = _quantized(model)
        self.rewrite = GraphedRewrite(graphs)
        self._chosen_by: tuple | None = None  # the layers' state the kept slots were chosen by
        self._kept: list[BitLinear] = []
        self._slots: list[CodeSlot] = []
        self._keys: tuple = ()

    def _state(self) -> tuple:
        def of(layer: BitLinear) -> object:
            o = layer.kernel_options
            if not o.cache_codes:
                return o
            return (o, layer.lambda_is_one, layer.weight.data_ptr(), id(layer.ternary_codes))

        return tuple(of(layer) for layer in self.layers)

    def _choose(self) -> None:
        """Which layers keep codes now, their slots (made where missing), and the slots' keys."""
        state = self._state()
        if state == self._chosen_by:
            return
        self._kept, self._slots = [], []
        for layer in self.layers:
            if fastpath.keeps_codes(layer):
                self._kept.append(layer)
                self._slots.append(fastpath.code_slot(layer, layer.kernel_options.grad_input_int8))
            else:
                fastpath.drop_codes(layer)
        self._keys = tuple(slot.key() for slot in self._slots)
        self._chosen_by = self._state()  # keeps_codes re-read lambda buffers written behind set_lambda

    def refresh(self) -> None:
        """Rewrite every kept code from its weight (call after each optimizer step)."""
        self._choose()
        self.rewrite(self._slots, self._keys)
        for layer in self._kept:
            fastpath.mark_current(layer)

    def sync(self) -> None:
        """Rewrite the codes whose weight was written since they were made (version counters)."""
        self._choose()
        for layer, slot in zip(self._kept, self._slots, strict=True):
            fastpath.rewrite_if_written(layer, slot)

    @property
    def replaying(self) -> bool:
        """The refresh is a replayed CUDA graph."""
        return self.rewrite.replaying


def refresh_ternary_codes(model: nn.Module) -> None:
    """Rewrite the ternary codes of every fast-path BitLinear of `model` from its weight.

    Call it after every `optimizer.step()` (and after writing weights through `.data`): the
    codes are what the fused kernels multiply by. A no-op where no layer takes the fast path.
    """
    CodeRefresher(model, graphs=False).refresh()
