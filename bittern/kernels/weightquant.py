"""Ternary weight quantization on the device, cached until the weight changes.

Mirrors `bittern.quant.ternarize` for per-tensor and per-channel scales: gamma =
max(mean|W|, EPS) * multiplier, W_q = clamp(round(W / gamma), -1, 1) as int8 in the
weight's own (out, in) layout, K-contiguous as Hopper's int8 tensor cores want it. The mean
is reduced on the device in two launches (partial sums, then every program of the
quantizing launch sums the partials itself), so nothing waits on the host.

`WeightCache` keeps the codes of each latent weight and rewrites them in place after every
torch optimizer step (and when a lookup sees the weight's version counter move), so the
codes are made once per optimizer step however many micro-batches and backward passes read
them, and a compiled graph that took them as inputs sees each step's. The optimizer hook is
needed: fused AdamW
(`fused=True`, the trainer's choice on CUDA) writes the parameters in place without moving
their version counters, and a cache trusting them alone would keep the first step's codes
forever (the model would train its norms and embeddings only).

On a GPU, once the set of entries has stayed the same over two refreshes, `refresh_all`
records its launches in a CUDA graph and replays it after later steps: every launch keeps
its addresses (the weights are updated in place, the entries rewritten in place), and one
replay replaces two Python-launched kernels per layer, ~100 us of host time each, which a
small model's step cannot hide behind its GPU work. Any change of the entries (a layer
added, dropped or moved, a transposed copy asked for) refreshes eagerly and records anew.
"""

from __future__ import annotations

import itertools
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl
from torch.multiprocessing.reductions import StorageWeakRef
from torch.optim.optimizer import register_optimizer_step_post_hook

from bittern.kernels.common import INTERPRET, launch, round_half_even, round_to
from bittern.quant.core import ternarize

MAX_PARTIALS = 1024

# ---- reference -------------------------------------------------------------------------


def ternarize_reference(
    w: torch.Tensor, gamma_multiplier: float, per_channel: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """`bittern.quant.ternarize`, with gamma flattened to (1,) per tensor or (out,) per channel."""
    codes, gamma = ternarize(w, "channel" if per_channel else "tensor", gamma_multiplier=gamma_multiplier)
    return codes, gamma.reshape(-1)


def dequantize_weight_reference(codes: torch.Tensor, gamma: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """codes * gamma cast to `dtype`: the weight the reference path's matmul sees."""
    g = gamma[:, None] if gamma.numel() > 1 else gamma.reshape(())
    return (codes.float() * g).to(dtype)


# ---- kernels ---------------------------------------------------------------------------


@triton.jit
def _abs_sum_kernel(W, PART, numel, ITERS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(ITERS):
        offs = (pid * ITERS + i) * BLOCK + tl.arange(0, BLOCK)
        acc += tl.abs(tl.load(W + offs, mask=offs < numel, other=0.0).to(tl.float32))
    tl.store(PART + pid, tl.sum(acc, axis=0))


@triton.jit
def _row_gamma_kernel(W, GAMMA, K, mult, ITERS: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    for i in range(ITERS):
        cols = i * BLOCK_K + tl.arange(0, BLOCK_K)
        acc += tl.abs(tl.load(W + row * K + cols, mask=cols < K, other=0.0).to(tl.float32))
    tl.store(GAMMA + row, tl.maximum(tl.sum(acc, axis=0) / K, 1e-5) * mult)


@triton.jit
def _ternarize_kernel(
    W,
    CODES,
    GAMMA,
    PART,
    N,
    K,
    n_part,
    numel,
    mult,
    PER_CHANNEL: tl.constexpr,
    PART_BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < N) & (cols[None, :] < K)
    offs = rows[:, None].to(tl.int64) * K + cols[None, :]
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    if PER_CHANNEL:
        gamma = tl.load(GAMMA + rows, mask=rows < N, other=1.0)[:, None]
    else:
        part = tl.load(PART + tl.arange(0, PART_BLOCK), mask=tl.arange(0, PART_BLOCK) < n_part, other=0.0)
        # float32 even when Inductor passes numel or mult as float64 (symbolic shapes under FSDP2)
        gamma = (tl.maximum(tl.sum(part, axis=0) / numel, 1e-5) * mult).to(tl.float32)
        tl.store(GAMMA, gamma, mask=(pid_n == 0) & (pid_k == 0))
    q = round_half_even(tl.math.div_rn(w, gamma), INTERPRET)
    q = tl.minimum(tl.maximum(q, -1.0), 1.0)
    tl.store(CODES + offs, q.to(tl.int8), mask=mask)


@triton.jit
def _dequantize_weight_kernel(
    CODES,
    GAMMA,
    OUT,
    N,
    K,
    PER_CHANNEL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < N) & (cols[None, :] < K)
    offs = rows[:, None].to(tl.int64) * K + cols[None, :]
    q = tl.load(CODES + offs, mask=mask, other=0).to(tl.float32)
    if PER_CHANNEL:
        gamma = tl.load(GAMMA + rows, mask=rows < N, other=1.0)[:, None]
    else:
        gamma = tl.load(GAMMA)
    tl.store(OUT + offs, round_to(q * gamma, OUT.dtype.element_ty, INTERPRET), mask=mask)


# ---- launchers -------------------------------------------------------------------------


def ternarize_weight(
    w: torch.Tensor,
    gamma_multiplier: float = 1.0,
    per_channel: bool = False,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel version of `ternarize_reference` for a contiguous (out, in) weight.

    `out`: (codes, gamma) tensors to write in place (the cache refreshes its entries so).
    """
    assert w.dim() == 2 and w.is_contiguous()
    N, K = w.shape
    dev = w.device
    if out is None:
        codes = torch.empty((N, K), dtype=torch.int8, device=dev)
        gamma = torch.empty(N if per_channel else 1, dtype=torch.float32, device=dev)
    else:
        codes, gamma = out
    block_k = min(2048, triton.next_power_of_2(K))
    if per_channel:
        part, n_part, part_block = gamma, 1, 1
        launch(_row_gamma_kernel)[(N,)](
            w, gamma, K, gamma_multiplier, ITERS=triton.cdiv(K, block_k), BLOCK_K=block_k, num_warps=4
        )
    else:
        block = 4096
        iters = max(1, triton.cdiv(triton.cdiv(w.numel(), MAX_PARTIALS), block))
        n_part = triton.cdiv(w.numel(), iters * block)
        part = torch.empty(n_part, dtype=torch.float32, device=dev)
        part_block = triton.next_power_of_2(n_part)
        launch(_abs_sum_kernel)[(n_part,)](w, part, w.numel(), ITERS=iters, BLOCK=block, num_warps=8)
    bn, bk = 32, min(256, triton.next_power_of_2(K))
    launch(_ternarize_kernel)[(triton.cdiv(N, bn), triton.cdiv(K, bk))](
        w,
        codes,
        gamma,
        part,
        N,
        K,
        n_part,
        float(N * K),
        gamma_multiplier,
        PER_CHANNEL=per_channel,
        PART_BLOCK=part_block,
        BLOCK_N=bn,
        BLOCK_K=bk,
        INTERPRET=INTERPRET,
        num_warps=4,
    )
    return codes, gamma


def dequantize_weight(codes: torch.Tensor, gamma: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Kernel version of `dequantize_weight_reference`."""
    N, K = codes.shape
    out = torch.empty((N, K), dtype=dtype, device=codes.device)
    bn, bk = 32, min(256, triton.next_power_of_2(K))
    launch(_dequantize_weight_kernel)[(triton.cdiv(N, bn), triton.cdiv(K, bk))](
        codes,
        gamma,
        out,
        N,
        K,
        PER_CHANNEL=gamma.numel() > 1,
        BLOCK_N=bn,
        BLOCK_K=bk,
        INTERPRET=INTERPRET,
        num_warps=4,
    )
    return out


# ---- cache -----------------------------------------------------------------------------


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
            and not INTERPRET
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
            codes, gamma = ternarize_weight(w, gamma_multiplier, per_channel)
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
            codes, gamma = ternarize_weight(w, gamma_multiplier, per_channel)
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
    ternarize_weight(w, multiplier, per_channel, out=(entry.codes, entry.gamma))
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


WEIGHT_CACHE = WeightCache()
# any optimizer's step (fused ones included) may have rewritten any weight: refresh the codes
# now, in place, so that compiled graphs holding them see the new ones
register_optimizer_step_post_hook(lambda optimizer, args, kwargs: WEIGHT_CACHE.refresh_all())
