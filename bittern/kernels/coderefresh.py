"""Ternary codes rewritten in place from their weights, replayed as one CUDA graph once settled.

A `CodeSlot` is a weight and the tensors its codes live in (int8 codes, float32 gamma, and
optionally the codes transposed), with the quantizer's settings. `rewrite` ternarizes the
weight into them in place, so a compiled graph that took them as inputs reads the new codes.
`GraphedRewrite` rewrites a list of slots, once per optimizer step: once it has seen the same
list (same addresses, same settings) twice, it records the rewrite in a CUDA graph and replays
it from then on. Every launch keeps its addresses (optimizers update weights in place, codes are
rewritten in place), and one replay replaces two Python-launched kernels per layer, ~100 us of
host time each, which a small model's step cannot hide behind its GPU work. Any change of the
list (a layer added, dropped or moved, a transposed copy asked for) rewrites eagerly and
records anew.

Whoever steps the optimizer owns a `GraphedRewrite` (through `bittern.nn.CodeRefresher`); this
module keeps no state of its own and imports no Triton (the kernels load on the first rewrite).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class CodeSlot:
    """A weight, the tensors that hold its ternary codes, and how it is ternarized."""

    weight: torch.Tensor
    codes: torch.Tensor
    gamma: torch.Tensor
    codes_t: torch.Tensor | None
    gamma_multiplier: float
    per_channel: bool

    def key(self) -> tuple:
        """What a recorded rewrite of this slot depends on besides the weight's values."""
        w = self.weight
        t = None if self.codes_t is None else self.codes_t.data_ptr()
        return (
            w.data_ptr(),
            tuple(w.shape),
            tuple(w.stride()),
            w.dtype,
            self.codes.data_ptr(),
            self.gamma.data_ptr(),
            t,
            float(self.gamma_multiplier),
            bool(self.per_channel),
        )


def new_codes(
    weight: torch.Tensor, gamma_multiplier: float, per_channel: bool, transposed: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(codes, gamma, codes^T if `transposed`) of `weight`, in new tensors."""
    from bittern.kernels.weightquant import ternarize_weight

    codes, gamma = ternarize_weight(weight.detach(), gamma_multiplier, per_channel)
    return codes, gamma, codes.t().contiguous() if transposed else None


def rewrite(slot: CodeSlot) -> None:
    """Ternarize the slot's weight into its tensors, in place (device work only)."""
    from bittern.kernels.weightquant import ternarize_weight

    ternarize_weight(
        slot.weight.detach(), slot.gamma_multiplier, slot.per_channel, out=(slot.codes, slot.gamma)
    )
    if slot.codes_t is not None:
        slot.codes_t.copy_(slot.codes.t())


def capture_graph(fn: Callable[[], None]) -> Callable[[], None]:
    """`fn`'s CUDA launches recorded in a CUDA graph (not run); returns the graph's replay."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        fn()
    return graph.replay


class GraphedRewrite:
    """`rewrite` of a list of slots; recorded as a CUDA graph once the same list came twice.

    An in-place rewrite overwrites codes that a pending backward saved, so call it between a
    backward and the next forward (after the optimizer step), never in between.
    """

    def __init__(self, graphs: bool = True) -> None:
        self.graphs = graphs  # replay as a CUDA graph once the slots settle (CUDA only)
        self.rewrites = 0  # slots rewritten, replays included: one per layer per step when all is well
        self._seen: tuple = ()  # the slots' keys at the last eager rewrite
        self._replay: tuple[tuple, Callable[[], None]] | None = None  # (keys, recorded rewrite)

    @property
    def replaying(self) -> bool:
        """A recorded rewrite is in use."""
        return self._replay is not None

    def __call__(self, slots: list[CodeSlot], keys: tuple | None = None) -> None:
        """Rewrite `slots`; `keys`, their `key()`s if the caller knows them unchanged (saves host time)."""
        if not slots:
            return
        keys = tuple(slot.key() for slot in slots) if keys is None else keys
        self.rewrites += len(slots)
        if self._replay is not None and self._replay[0] == keys:
            self._replay[1]()
            return
        for slot in slots:
            rewrite(slot)
        if keys == self._seen and self._graphable(slots):
            self._record(keys, slots)
        self._seen = keys

    def _graphable(self, slots: list[CodeSlot]) -> bool:
        return (
            self.graphs
            and all(slot.weight.is_cuda for slot in slots)
            and not torch.compiler.is_compiling()
            and not torch.cuda.is_current_stream_capturing()
        )

    def _record(self, keys: tuple, slots: list[CodeSlot]) -> None:
        """Record the rewrite of `slots` (already rewritten eagerly: recording does not run it)."""

        def rewrite_all() -> None:
            for slot in slots:
                rewrite(slot)

        try:
            self._replay = (keys, capture_graph(rewrite_all))
        except Exception as e:  # a device or driver that cannot record: keep rewriting eagerly
            self.graphs = False
            self._replay = None
            warnings.warn(f"code refresh stays eager: recording a CUDA graph failed ({e})", stacklevel=2)
