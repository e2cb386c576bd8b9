"""One optimizer step as an object: the code the trainer runs and the benchmarks time.

`TrainStep(batches)` runs forward and backward over the micro-batches (gradient sync on the
last only), averages the loss over ranks, unscales (fp16) and clips, reads the loss and the
gradient norm back in one host synchronization, lets the guard judge, and then steps the
optimizer, refreshes the ternary codes (`bittern.nn.CodeRefresher`) and runs the after-update
calls (the packed all-gather's `pack_shards`); or skips. It returns what it measured as a
`StepOutcome`. The trainer keeps the bookkeeping around it (schedules, the step counter, the
data cursor, logging, checkpoints); `benchmarks/train_throughput.py` calls the same object.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from bittern.distributed import DistInfo, any_across_ranks, average_gradients, mean_across_ranks
from bittern.nn import CodeRefresher
from bittern.train.clip import GradClipper, per_layer_grad_norms
from bittern.train.guard import OK, StabilityGuard
from bittern.train.scaling import DynamicLossScaler

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class StepOutcome:
    loss: float  # the mean loss over micro-batches (and ranks)
    grad_norm: float  # the global gradient norm before clipping
    action: str  # ok | skip | rollback | overflow
    reason: str = ""
    layer_norms: dict[str, float] = field(default_factory=dict)  # per parameter, when asked for


class TrainStep:
    """Forward/backward over micro-batches, clip, judge, optimizer step, code refresh.

    `loss(x, y)` is one micro-batch's loss (its forward included); `gradient_sync(last)` the
    context a micro-batch's backward runs in (DDP's no_sync on all but the last); `guard` None
    applies every finite-or-not step; `extra_params` are trained parameters outside the wrapped
    model, whose gradients are averaged over ranks here (the loss's projections); `expert_params`
    this rank's own experts under expert parallelism (their norms summed over ranks by the clipper).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        clipper: GradClipper,
        *,
        accum: int = 1,
        gradient_sync: Callable[[bool], contextlib.AbstractContextManager] | None = None,
        scaler: DynamicLossScaler | None = None,
        guard: StabilityGuard | None = None,
        dist: DistInfo | None = None,
        extra_params: Sequence[torch.Tensor] = (),
        expert_params: Sequence[torch.Tensor] = (),
        after_update: Sequence[Callable[[], None]] = (),
    ) -> None:
        self.model, self.optimizer, self.loss, self.clipper = model, optimizer, loss, clipper
        self.accum, self.scaler, self.guard = accum, scaler, guard
        self.gradient_sync = gradient_sync or (lambda last: contextlib.nullcontext())
        self.dist = dist or DistInfo()
        self.extra_params, self.after_update = list(extra_params), list(after_update)
        self.expert_params = list(expert_params)
        self.codes = CodeRefresher(model)

    def __call__(
        self, batches: Iterable[Batch], alpha: float = 1.0, want_layer_norms: bool = False
    ) -> StepOutcome:
        """One optimizer step (or a judged skip) over `accum` micro-batches; the loss scaled by `alpha`."""
        loss = self.forward_backward(batches, alpha)
        average_gradients(self.extra_params, self.dist)
        params = [p for p in self.model.parameters() if p.grad is not None]
        finite = True
        if self.scaler:  # fp16: one rank's overflow skips the step on every rank
            device = loss.device
            finite = not any_across_ranks(not self.scaler.unscale_and_check(params), device, self.dist)
        norm = self.clipper.clip(params, split=self.expert_params)["grad_norm"]
        if isinstance(norm, DTensor):  # FSDP2: the sharded gradients' norm, reduced over ranks
            norm = norm.full_tensor()
        # one host synchronization for both (the guard judges on the host)
        loss, grad_norm = torch.stack([loss.float().reshape(()), norm.to(loss.device).reshape(())]).tolist()
        layer_norms = per_layer_grad_norms(self.model) if want_layer_norms else {}
        if self.scaler and not finite:
            outcome = StepOutcome(loss, grad_norm, "overflow", "fp16 overflow")
            if self.guard is not None:
                self.guard.skip_overflow()  # counted in skipped_steps, never a bad step
        elif self.guard is None:
            outcome = StepOutcome(loss, grad_norm, OK)
        else:
            verdict = self.guard.judge(loss, math.isfinite(grad_norm))
            outcome = StepOutcome(loss, grad_norm, verdict.action, verdict.reason)
        outcome.layer_norms = layer_norms
        if outcome.action == OK:
            self.optimizer.step()
            self.codes.refresh()  # the fused kernels' codes of the new weights
            for call in self.after_update:
                call()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.update(finite)
        return outcome

    def forward_backward(self, batches: Iterable[Batch], alpha: float = 1.0) -> torch.Tensor:
        """Accumulate gradients over the micro-batches; return the mean loss (averaged over ranks)."""
        self.codes.sync()  # weights written outside an optimizer step (a load, a rollback)
        total = None
        for m, (x, y) in enumerate(batches):
            with self.gradient_sync(m == self.accum - 1):
                loss = self.loss(x, y)
                scaled = loss * (alpha / self.accum)
                (self.scaler.scale_loss(scaled) if self.scaler else scaled).backward()
            if total is None:
                total = torch.zeros((), device=loss.device)
            total += loss.detach()
        return mean_across_ranks(total / self.accum, self.dist)
