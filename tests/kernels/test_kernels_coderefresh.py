"""Codes rewritten in place from their weights, and the CUDA-graph bookkeeping of `GraphedRewrite`.

The rewrites run the Triton kernels (here under the interpreter), checked against
bittern.quant.ternarize.
"""

import pytest
import torch

pytest.importorskip("triton")

from bittern.kernels import coderefresh  # noqa: E402
from bittern.kernels.coderefresh import CodeSlot, GraphedRewrite, new_codes, rewrite  # noqa: E402
from bittern.kernels.weightquant import ternarize_reference  # noqa: E402


def _w(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * 0.05 * (torch.rand(rows, 1, generator=g) + 0.5)


def _slot(w: torch.Tensor, multiplier: float = 1.0, per_channel: bool = False, transposed=False) -> CodeSlot:
    return CodeSlot(w, *new_codes(w, multiplier, per_channel, transposed), multiplier, per_channel)


@pytest.mark.parametrize("per_channel", [False, True])
def test_rewrite_follows_the_weight_in_place(per_channel):
    w = torch.nn.Parameter(_w(16, 32))
    slot = _slot(w, 1.3, per_channel, transposed=True)
    codes, gamma, codes_t = slot.codes, slot.gamma, slot.codes_t
    assert torch.equal(codes, ternarize_reference(w.detach(), 1.3, per_channel)[0])
    with torch.no_grad():
        w.neg_().mul_(1.7)
    rewrite(slot)
    want_codes, want_gamma = ternarize_reference(w.detach(), 1.3, per_channel)
    assert slot.codes is codes and torch.equal(codes, want_codes)  # the same tensors, new values
    torch.testing.assert_close(gamma, want_gamma, rtol=1e-6, atol=0)
    assert codes_t.is_contiguous() and torch.equal(codes_t, codes.t())


def test_graphed_rewrite_records_once_the_slots_settle_and_replays(monkeypatch):
    """The CUDA-graph bookkeeping, with a stand-in recorder (a replay reruns what was recorded)."""
    recorded = []

    def record(fn):
        recorded.append(fn)
        return fn

    monkeypatch.setattr(coderefresh, "capture_graph", record)
    monkeypatch.setattr(GraphedRewrite, "_graphable", lambda self, slots: True)
    graphed = GraphedRewrite()
    a, b = (torch.nn.Parameter(_w(16, 32, seed=s)) for s in (1, 2))
    slots = [_slot(a), _slot(b, per_channel=True)]

    def step_and_check(slots):
        with torch.no_grad():
            for w in (a, b):
                w.data.copy_(torch.randn_like(w))  # unseen by the version counter, as fused AdamW
        graphed(slots)
        for slot in slots:
            assert torch.equal(
                slot.codes, ternarize_reference(slot.weight.detach(), 1.0, slot.per_channel)[0]
            )

    step_and_check(slots)
    assert recorded == [] and not graphed.replaying  # the first rewrite of these slots: eager
    step_and_check(slots)
    assert len(recorded) == 1 and graphed.replaying  # the same slots twice: recorded
    step_and_check(slots)  # replayed
    step_and_check(slots)
    assert len(recorded) == 1 and graphed.rewrites == 4 * 2
    slots[0] = _slot(a, transposed=True)  # the slots changed: eager, then recorded anew
    step_and_check(slots)
    assert len(recorded) == 1
    step_and_check(slots)
    assert len(recorded) == 2
    step_and_check(slots)
    assert torch.equal(slots[0].codes_t, slots[0].codes.t())
    a.data = -a.data  # moved (new storage): the recording must not run for the old address
    before = slots[0].codes.clone()
    slots[0] = CodeSlot(a, slots[0].codes, slots[0].gamma, slots[0].codes_t, 1.0, False)
    graphed(slots)
    assert len(recorded) == 2 and not torch.equal(slots[0].codes, before)
    assert torch.equal(slots[0].codes, ternarize_reference(a.detach(), 1.0, False)[0])


def test_two_rewriters_keep_no_state_in_common():
    a, b = torch.nn.Parameter(_w(8, 16, seed=3)), torch.nn.Parameter(_w(8, 16, seed=4))
    first, second = GraphedRewrite(), GraphedRewrite()
    slot_a, slot_b = _slot(a), _slot(b)
    before_b = slot_b.codes.clone()
    with torch.no_grad():
        a.neg_()
        b.neg_()
    first([slot_a])
    assert torch.equal(slot_a.codes, ternarize_reference(a.detach(), 1.0, False)[0])
    assert torch.equal(slot_b.codes, before_b)  # not the other rewriter's
    assert (first.rewrites, second.rewrites) == (1, 0)
