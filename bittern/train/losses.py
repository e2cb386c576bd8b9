"""Loss terms: cross-entropy (with hard-token mining), distillation, hidden-state matching,
the quantization regularizer and the triplet margin loss, each a small function stating its formula.

`LossComputer` adds the terms the config switches on and returns them by name so each is
logged: loss/ce, loss/ce_all, loss/distill, loss/hidden, loss/quant_reg, loss/margin, loss/total.
Teacher tensors are always detached: gradients reach the student (and projections) only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bittern.config import LossConfig
from bittern.nn import bitlinear_layers
from bittern.quant.core import dequantize_weight, ternarize


def _chunks(width: int, chunk: int) -> list[slice]:
    chunk = width if chunk <= 0 else chunk
    return [slice(i, min(i + chunk, width)) for i in range(0, width, chunk)]


def _wide(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16/fp16 logits are widened chunk by chunk, float64 kept)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _chunked_lse(x: torch.Tensor, temperature: float, chunk: int) -> torch.Tensor:
    """logsumexp(x / T) over the last dim in float32 (or wider), one vocabulary chunk at a time."""
    parts = [torch.logsumexp(_wide(x[:, c]) / temperature, dim=-1) for c in _chunks(x.shape[-1], chunk)]
    return torch.logsumexp(torch.stack(parts, dim=-1), dim=-1)


class _ChunkedKL(torch.autograd.Function):
    """Per-row KL(softmax(t/T) || softmax(s/T)), walking the vocabulary in chunks, two passes.

    Pass 1 takes both log-sum-exps; pass 2 sums p_t * (log p_t - log p_s) and, when s needs a
    gradient, writes dKL/ds = (softmax(s/T) - softmax(t/T)) / T into one buffer shaped like s
    (the gradient must exist anyway). Backward only scales that buffer by the incoming gradient,
    in place, so no full-vocabulary probability tensor is ever held besides it.
    """

    @staticmethod
    def forward(ctx, s: torch.Tensor, t: torch.Tensor, temperature: float, chunk: int) -> torch.Tensor:
        lse_s, lse_t = _chunked_lse(s, temperature, chunk), _chunked_lse(t, temperature, chunk)
        kl = torch.zeros_like(lse_s)
        grad = torch.empty_like(s) if ctx.needs_input_grad[0] else None
        for c in _chunks(s.shape[-1], chunk):
            log_ps = _wide(s[:, c]) / temperature - lse_s[:, None]
            log_pt = _wide(t[:, c]) / temperature - lse_t[:, None]
            pt = log_pt.exp()
            kl += (pt * (log_pt - log_ps)).sum(-1)
            if grad is not None:
                grad[:, c] = ((log_ps.exp() - pt) / temperature).to(grad.dtype)
        ctx.grad = grad
        return kl

    @staticmethod
    def backward(ctx, grad_kl: torch.Tensor):
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            raise RuntimeError("distill_kl: backward through the same graph twice is not supported")
        return grad.mul_(grad_kl[:, None].to(grad.dtype)), None, None, None


def distill_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    vocab_chunk: int = 8192,
) -> torch.Tensor:
    """T^2 * mean over tokens of KL(softmax(teacher/T) || softmax(student/T)), chunked over the vocabulary.

    Logits are (..., V); where the widths differ (padded vocabularies) both are cut to the
    narrower one. vocab_chunk <= 0 takes the whole vocabulary at once.
    """
    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    s = student_logits[..., :v].reshape(-1, v)
    t = teacher_logits.detach()[..., :v].reshape(-1, v)
    kl = _ChunkedKL.apply(s, t, float(temperature), int(vocab_chunk))
    return temperature**2 * kl.mean()


def combine_ce_distill(ce: torch.Tensor, distill: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 - w) * CE + w * distill."""
    return (1.0 - weight) * ce + weight * distill


def token_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy (float32), flattened to (N,)."""
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), reduction="none")


def hardest_mean(per_token: torch.Tensor, ratio: float) -> torch.Tensor:
    """Mean of the k = max(1, ceil(ratio * N)) largest of N per-token losses."""
    k = max(1, math.ceil(ratio * per_token.numel()))
    return per_token.topk(k, sorted=False).values.mean()


def hard_token_ce(logits: torch.Tensor, targets: torch.Tensor, ratio: float = 1.0) -> torch.Tensor:
    """Mean of the hardest fraction `ratio` of per-token CE (hardest_mean); ratio 1 is the plain mean CE."""
    if ratio >= 1.0:
        return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten())
    return hardest_mean(token_ce(logits, targets), ratio)


def layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Teacher layer for each student layer, spread evenly, last to last: j(i) = (i+1) * Lt // Ls - 1."""
    return [max(0, (i + 1) * n_teacher // n_student - 1) for i in range(n_student)]


def make_projections(student_dim: int, teacher_dim: int, n_student_layers: int) -> nn.ModuleList:
    """One learned Linear(student_dim -> teacher_dim) per student layer, or none when the widths agree."""
    if student_dim == teacher_dim:
        return nn.ModuleList()
    return nn.ModuleList(nn.Linear(student_dim, teacher_dim, bias=False) for _ in range(n_student_layers))


def hidden_distill(
    student_hiddens: list[torch.Tensor],
    teacher_hiddens: list[torch.Tensor],
    projections: nn.ModuleList | None = None,
) -> torch.Tensor:
    """(1/Ls) * sum_i mean((P_i h_s[i] - h_t[j(i)])^2), j = layer_map(Ls, Lt), P_i = identity by default."""
    idx = layer_map(len(student_hiddens), len(teacher_hiddens))
    terms = []
    for i, (h, j) in enumerate(zip(student_hiddens, idx, strict=True)):
        if projections is not None and len(projections):
            h = projections[i](h)
        terms.append(F.mse_loss(h.float(), teacher_hiddens[j].detach().float()))
    return torch.stack(terms).mean()


def quant_regularizer(model: nn.Module) -> torch.Tensor:
    """(1/L) * sum over the L quantized BitLinears of mean((W - gamma * clamp(round(W / gamma), -1, 1))^2).

    Each layer counts equally whatever its size; gamma and the grid point are detached (the
    layer's own granularity and gamma multiplier), so the gradient pulls W toward {-g, 0, +g}.
    """
    terms = []
    for _, layer in bitlinear_layers(model):
        o = layer.options
        target = dequantize_weight(*ternarize(layer.weight, o.granularity, o.group_size, o.gamma_multiplier))
        terms.append((layer.weight.float() - target).square().mean())
    if not terms:
        return torch.zeros((), device=next(model.parameters()).device)
    return torch.stack(terms).mean()


def pool_hidden(hidden: torch.Tensor) -> torch.Tensor:
    """A sequence representation: the mean over positions of (B, T, D), L2-normalised to unit length."""
    return F.normalize(hidden.float().mean(dim=1), dim=-1)


def margin_loss(
    student_pooled: torch.Tensor, teacher_pooled: torch.Tensor, margin: float = 0.3
) -> torch.Tensor:
    """mean_b max(0, |a_b - p_b| - |a_b - n_b| + margin), Euclidean distances.

    Anchor a = student, positive p = teacher on the same sequence, negative n = teacher on the
    previous sequence of the batch (p rolled by one). Zero for a batch of one (no negative).
    """
    if student_pooled.shape[0] < 2:
        return student_pooled.sum() * 0.0
    p = teacher_pooled.detach()
    return F.triplet_margin_loss(student_pooled, p, p.roll(1, dims=0), margin=margin, p=2.0)


@dataclass
class TeacherOutput:
    """What the teacher says about a batch: logits, and its per-block hidden states when asked for."""

    logits: torch.Tensor
    hiddens: list[torch.Tensor] | None = None


class LossComputer(nn.Module):
    """The training loss of one micro-batch from the config's loss.* weights; holds the hidden projections."""

    def __init__(
        self,
        cfg: LossConfig,
        student_dim: int,
        student_layers: int,
        teacher_dim: int | None = None,
        teacher_layers: int | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.teacher_layers = teacher_layers or student_layers
        dims = (student_dim, teacher_dim or student_dim)
        self.projections = make_projections(*dims, student_layers) if self.needs_hidden else nn.ModuleList()

    @property
    def needs_teacher(self) -> bool:
        c = self.cfg
        return c.distill > 0 or c.distill_hidden > 0 or c.margin > 0

    @property
    def needs_hidden(self) -> bool:
        return self.cfg.distill_hidden > 0 or self.cfg.margin > 0

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        hiddens: list[torch.Tensor] | None = None,
        teacher: TeacherOutput | None = None,
        model: nn.Module | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, {name: detached value}) for student outputs, targets and the teacher's outputs."""
        c, parts = self.cfg, {}
        if self.needs_teacher and teacher is None:
            raise ValueError("loss.distill / distill_hidden / margin need the teacher's outputs")
        if self.needs_hidden and (hiddens is None or teacher.hiddens is None):
            raise ValueError("loss.distill_hidden / margin need student and teacher hidden states")
        if c.quant_reg > 0 and model is None:
            raise ValueError("loss.quant_reg needs the student model")
        if c.hard_token_ratio < 1.0:
            per_token = token_ce(logits, targets)
            ce = hardest_mean(per_token, c.hard_token_ratio)
            parts["loss/ce_all"] = per_token.detach().mean()
        else:
            ce = hard_token_ce(logits, targets)
        parts["loss/ce"] = ce.detach()
        total = ce
        if c.distill > 0:
            kd = distill_kl(logits, teacher.logits, c.temperature, c.vocab_chunk)
            parts["loss/distill"] = kd.detach()
            total = combine_ce_distill(ce, kd, c.distill)
        if c.distill_hidden > 0:
            hid = hidden_distill(hiddens, teacher.hiddens, self.projections)
            parts["loss/hidden"] = hid.detach()
            total = total + c.distill_hidden * hid
        if c.margin > 0:
            last = hiddens[-1] if not len(self.projections) else self.projections[-1](hiddens[-1])
            mar = margin_loss(pool_hidden(last), pool_hidden(teacher.hiddens[-1]), c.margin_value)
            parts["loss/margin"] = mar.detach()
            total = total + c.margin * mar
        if c.quant_reg > 0:
            reg = quant_regularizer(model)
            parts["loss/quant_reg"] = reg.detach()
            total = total + c.quant_reg * reg
        parts["loss/total"] = total.detach()
        return total, parts
