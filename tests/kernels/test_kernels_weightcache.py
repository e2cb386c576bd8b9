"""The weight-code cache: reuse until the weight changes, refresh after optimizer steps, CUDA-graph replay.

Its entries are filled by the Triton kernels (run here under the interpreter), checked against
bittern.quant.ternarize.
"""

import gc

import pytest
import torch

pytest.importorskip("triton")

from bittern.kernels import weightcache  # noqa: E402
from bittern.kernels.weightcache import WEIGHT_CACHE, WeightCache  # noqa: E402
from bittern.kernels.weightquant import ternarize_reference  # noqa: E402  (also registers the hook)


def _w(rows: int, cols: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g) * 0.05 * (torch.rand(rows, 1, generator=g) + 0.5)).to(dtype)


def test_cache_reuses_until_the_weight_changes():
    cache = WeightCache()
    w = torch.nn.Parameter(_w(16, 32))
    codes, gamma, _ = cache.lookup(w, 1.0, False)
    again, gamma_again, _ = cache.lookup(w, 1.0, False)
    assert again is codes and gamma_again is gamma  # a micro-batch later: no recomputation
    opt = torch.optim.SGD([w], lr=1.0)
    w.grad = torch.randn_like(w)
    opt.step()  # an in-place update moves the version counter
    before = codes.clone()
    fresh, _, _ = cache.lookup(w, 1.0, False)
    assert fresh is codes  # rewritten in place: a compiled graph holding it reads the new codes
    assert torch.equal(fresh, ternarize_reference(w.detach(), 1.0, False)[0])
    assert not torch.equal(fresh, before)


def test_any_optimizer_step_refreshes_the_global_cache_in_place():
    w = torch.nn.Parameter(_w(16, 32, seed=5))
    codes, gamma, codes_t = WEIGHT_CACHE.lookup(w, 1.0, False, transposed=True)
    before = codes.clone()
    try:
        w.data.neg_()  # a write the version counter does not see (as fused AdamW's)
        other = torch.nn.Parameter(torch.zeros(3))
        other.grad = torch.ones(3)
        torch.optim.SGD([other], lr=0.1).step()  # some optimizer steps: every entry is refreshed
        assert torch.equal(codes, -before)
        assert torch.equal(codes, ternarize_reference(w.detach(), 1.0, False)[0])
        assert torch.equal(gamma, ternarize_reference(w.detach(), 1.0, False)[1])
        assert torch.equal(codes_t, codes.t())
    finally:
        WEIGHT_CACHE.clear()


def test_cache_keys_settings_and_forgets_dead_weights():
    cache = WeightCache()
    w = _w(16, 32)
    b = cache.lookup(w, 1.0, True)[0]
    c = cache.lookup(w, 2.0, False)[0]
    a = cache.lookup(w, 1.0, False)[0]
    assert len(cache) == 1 and a is not b and a is not c  # one entry per storage, settings honoured
    for codes, mult, per_channel in ((a, 1.0, False), (b, 1.0, True), (c, 2.0, False)):
        assert torch.equal(codes, ternarize_reference(w, mult, per_channel)[0])
    _, _, t = cache.lookup(w, 1.0, False, transposed=True)
    assert t.is_contiguous() and torch.equal(t, a.t())
    del w
    gc.collect()  # the interpreter's frames may hold the last launch's arguments in a cycle
    cache.lookup(_w(8, 8, seed=3), 1.0, False)  # a miss drops the entries of freed storages
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0


def test_cache_keeps_one_entry_per_storage_refilled_in_place():
    """FSDP2-like: one storage re-used for new views; entries never pile up and never go stale."""
    cache = WeightCache()
    flat = torch.empty(2 * 16 * 32)
    for seed in range(4):
        w = flat[(seed % 2) * 512 :][:512].view(16, 32)
        w.copy_(_w(16, 32, seed=seed))
        codes = cache.lookup(w, 1.0, False)[0]
        assert torch.equal(codes, ternarize_reference(w, 1.0, False)[0])
        assert len(cache) == 1


def test_refresh_all_records_once_the_entries_settle_and_replays(monkeypatch):
    """The CUDA-graph bookkeeping, with a stand-in recorder (a replay reruns what was recorded)."""
    recorded = []

    def record(fn):
        recorded.append(fn)
        return fn

    monkeypatch.setattr(weightcache, "capture_graph", record)
    monkeypatch.setattr(WeightCache, "_graphable", lambda self, live: True)
    cache = WeightCache()
    a, b = (torch.nn.Parameter(_w(16, 32, seed=s)) for s in (1, 2))
    codes_a = cache.lookup(a, 1.0, False)[0]
    codes_b = cache.lookup(b, 1.0, True)[0]

    def step_and_check():
        with torch.no_grad():
            for w in (a, b):
                w.data.copy_(torch.randn_like(w))  # unseen by the version counter, as fused AdamW
        cache.refresh_all()
        assert torch.equal(codes_a, ternarize_reference(a.detach(), 1.0, False)[0])
        assert torch.equal(codes_b, ternarize_reference(b.detach(), 1.0, True)[0])

    step_and_check()
    assert recorded == []  # the first refresh of these entries: eager
    step_and_check()
    assert len(recorded) == 1  # the same entries twice: recorded
    misses = cache.misses
    step_and_check()  # replayed
    step_and_check()
    assert len(recorded) == 1 and cache.misses == misses + 4
    codes_t = cache.lookup(a, 1.0, False, transposed=True)[2]  # the entries changed
    step_and_check()
    assert len(recorded) == 1
    step_and_check()
    assert len(recorded) == 2
    step_and_check()
    assert torch.equal(codes_t, codes_a.t())
    a.data = -a.data  # moved (new storage): its entry no longer matches, the recording must not run
    before = codes_a.clone()
    cache.refresh_all()
    assert len(cache) == 1 and len(recorded) == 2 and torch.equal(codes_a, before)
