"""The fast path's cache of ternary weight codes, refreshed in place until the weight changes.

`WeightCache` keeps the codes of each latent weight and rewrites them in place after every
torch optimizer step (and when a lookup sees the weight's version counter move), so the
codes are made once per optimizer step however many micro-batches and backward passes read
them, and a compiled graph that took them as inputs sees each step's. The optimizer hook is
needed: fused AdamW
(`fused=True`, the trainer's choice on CUDA) writes the parameters in place without moving
their version counters, and a cache trusting them alone would keep the first step's codes
forever (the model would train its norms and embeddings only). The hook is registered by
`bittern.kernels.weightquant`, the module whose kernels fill the cache.

On a GPU, once the set of entries has stayed the same over two refreshes, `refresh_all`
records its launches in a CUDA graph and replays it after later steps: every launch keeps
its addresses (the weights are updated in place, the entries rewritten in place), and one
replay replaces two Python-launched kernels per layer, ~100 us of host time each, which a
small model's step cannot hide behind its GPU work. Any change of the entries (a layer
added, dropped or moved, a transposed copy asked for) refreshes eagerly and records anew.

This module imports no Triton: the trainer switches the cache on or off (`set_weight_cache`)
on every machine, and the kernels (`bittern.kernels.weightquant`) are imported only when a
weight is first ternarized, which happens on the fast path alone.
"""

from __future__ import annotations

import itertools
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.multiprocessing.reductions import StorageWeakRef


@dataclass
class _Entry:
    weight: weakref.ref
    storage: StorageWeakRef
    version: int
    codes: torch.Tensor
    gamma: torch.Tensor
    codes_t: torch.Tensor | None = field(default=None)
    view: tuple = ()
    serial: int = field(default_factory=itertools.count().__next__)  # unique for the process's life


def capture_graph(fn: Callable[[], None]) -> Callable[[], None]:
    """`fn`'s CUDA launches recorded in a CUDA graph (not run); returns the graph's replay."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        fn()
    return graph.replay


class WeightCache:
    """Ternary codes per latent weight, refreshed in place whenever the weight may have changed.

    One entry per storage (held by weak references, as torch's own caches do), valid for one
    address, view, dtype and quantizer settings. An entry's tensors keep their addresses for
    its whole life: they are rewritten in place, so a compiled graph that took them as inputs
    (bound to each layer by `bittern.kernels.function.weight_codes`) always reads the current
    codes. Refreshes happen after every optimizer step (`refresh_all`, from a global optimizer
    hook) and on a lookup that sees `weight._version` moved. Other writes that bypass the
    version counter (through `.data`, or FSDP2's all-gather into its unsharded buffers) need
    `refresh_all()` or the cache off (`set_weight_cache(False)`).

    An in-place refresh overwrites codes that a pending backward saved, so a weight must not
    change between a forward and its backward (no optimizer step in between).
    """

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}
        self.enabled = True
        self.graphs = True  # replay refresh_all as a CUDA graph once the entries settle (GPU only)
        self.misses = 0  # ternarizations done: one per weight per optimizer step when caching works
        self._seen: tuple = ()  # the entries of the last eager refresh_all
        self._replay: tuple[tuple, Callable[[], None]] | None = None  # (entries, recorded refresh)

    def clear(self) -> None:
        self._entries.clear()
        self._seen, self._replay = (), None

    def refresh_all(self) -> None:
        """Re-ternarize every live entry in place now (after an optimizer step); drop the rest."""
        live = []
        for key, entry in list(self._entries.items()):
            w = entry.weight()
            if w is None or entry.storage.expired() or _view(w, *entry.view[-2:]) != entry.view:
                del self._entries[key]
            else:
                live.append((entry, w))
        if not live:
            return
        seen = tuple((entry.serial, entry.codes_t is not None) for entry, _ in live)
        if self._replay is not None and self._replay[0] == seen:
            self._replay[1]()
            self.misses += len(live)
            for entry, w in live:
                entry.version = w._version
            return
        for entry, w in live:
            self._refresh(entry, w)
        if seen == self._seen and self._graphable(live):
            self._record(seen, live)
        self._seen = seen

    def _graphable(self, live: list) -> bool:
        return (
            self.graphs
            and not _interpreting()
            and all(w.is_cuda for _, w in live)
            and not torch.compiler.is_compiling()
            and not torch.cuda.is_current_stream_capturing()
        )

    def _record(self, seen: tuple, live: list) -> None:
        """Record the refresh of `live` (already refreshed eagerly: recording does not run it)."""

        def rewrite_all() -> None:
            for entry, w in live:
                _rewrite(entry, w)

        try:
            self._replay = (seen, capture_graph(rewrite_all))
        except Exception as e:  # a device or driver that cannot record: keep refreshing eagerly
            self.graphs = False
            self._replay = None
            warnings.warn(f"weight refresh stays eager: recording a CUDA graph failed ({e})", stacklevel=2)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(
        self, w: torch.Tensor, gamma_multiplier: float, per_channel: bool, transposed: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(codes, gamma, codes^T if `transposed`) of `w`, computed on a miss."""
        if not self.enabled:
            self.misses += 1
            codes, gamma = _ternarize(w, gamma_multiplier, per_channel)
            return codes, gamma, codes.t().contiguous() if transposed else None
        storage = w.untyped_storage()
        # one entry per storage: a storage that is resized and refilled (FSDP2's unsharded
        # parameters) replaces its entry instead of piling up new ones
        key = storage._cdata
        view = _view(w, gamma_multiplier, per_channel)
        entry = self._entries.get(key)
        if entry is None or entry.storage.expired() or entry.view != view:
            self._drop_expired()
            self.misses += 1
            codes, gamma = _ternarize(w, gamma_multiplier, per_channel)
            entry = _Entry(
                weakref.ref(w),
                StorageWeakRef(storage),
                w._version,
                codes,
                gamma,
                view=view,
            )
            self._entries[key] = entry
        else:
            if entry.weight() is not w:  # the same storage seen through another tensor object
                entry.weight = weakref.ref(w)
            if entry.version != w._version:
                self._refresh(entry, w)
        if transposed and entry.codes_t is None:
            entry.codes_t = entry.codes.t().contiguous()
        return entry.codes, entry.gamma, entry.codes_t

    def _refresh(self, entry: _Entry, w: torch.Tensor) -> None:
        self.misses += 1
        _rewrite(entry, w)
        entry.version = w._version

    def _drop_expired(self) -> None:
        for key in [k for k, e in self._entries.items() if e.storage.expired() or e.weight() is None]:
            del self._entries[key]


def _rewrite(entry: _Entry, w: torch.Tensor) -> None:
    """Ternarize `w` into the entry's tensors, in place (device work only)."""
    multiplier, per_channel = entry.view[-2:]
    _ternarize(w, multiplier, per_channel, out=(entry.codes, entry.gamma))
    if entry.codes_t is not None:
        entry.codes_t.copy_(entry.codes.t())


def _view(w: torch.Tensor, gamma_multiplier: float, per_channel: bool) -> tuple:
    """What an entry's codes depend on besides the weight's values."""
    return (
        w.data_ptr(),
        tuple(w.shape),
        tuple(w.stride()),
        w.dtype,
        float(gamma_multiplier),
        bool(per_channel),
    )


def _ternarize(
    w: torch.Tensor,
    gamma_multiplier: float,
    per_channel: bool,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton kernel `ternarize_weight`, imported here because only the fast path gets here."""
    from bittern.kernels.weightquant import ternarize_weight

    return ternarize_weight(w, gamma_multiplier, per_channel, out=out)


def _interpreting() -> bool:
    """Triton runs interpreted (no CUDA graphs then); asked only once the cache holds codes."""
    from bittern.kernels.common import INTERPRET

    return INTERPRET


WEIGHT_CACHE = WeightCache()
