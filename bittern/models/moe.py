"""Mixture of experts: a full-precision router sends every token to its top-k expert FFNs.

Each expert is the model's own FeedForward (BitLinear projections for the ternary model,
nn.Linear for the twin); only the router stays full precision. Dropless: every token reaches
all k of its experts, whatever the load. Two expert paths compute the same function:

- "loop": each expert's FeedForward on the tokens routed to it (the reference; BitLinear's own
  fused path applies inside it);
- "grouped" (default): the token copies sorted by expert, each projection one grouped GEMM over
  all experts (bittern.kernels.grouped: torch._grouped_mm for bf16 on CUDA, the Triton
  int8 x ternary kernel for ternary experts on CUDA, a segment loop elsewhere).

Each forward leaves, for the trainer, `aux_loss` (the weighted balancing + z-loss, with its
graph) and `stats` (detached, one row: token copies per expert, mean router probabilities,
entropy, the balancing loss, the z-loss and a 1 that counts forwards once summed);
`moe_aux_loss` and bittern.monitor.moe read them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bittern.kernels.grouped import grouped_bitlinear, grouped_mm, grouped_ternary_linear
from bittern.models.config import ModelConfig
from bittern.nn.bitlinear import BitLinear
from bittern.nn.expertcodes import ExpertCodes
from bittern.nn.fastpath import experts_take_fast_path
from bittern.quant.ste import fake_quant_activations

EXPERT_PATHS = ("grouped", "grouped-v1", "loop")  # grouped-v1: per-call stacking (benchmarks)


def route(
    logits: torch.Tensor, top_k: int, bias: torch.Tensor | None = None, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weights (N, k), experts (N, k), probs (N, E)) from router logits (N, E), in float32.

    probs = softmax(logits); the k experts of highest probs + bias are chosen (the bias only
    chooses, it never weighs: DeepSeek-V3), weighted by their probs, renormalized to sum to 1.
    """
    probs = logits.float().softmax(dim=-1)
    scores = probs if bias is None else probs + bias.float()
    experts = scores.topk(top_k, dim=-1).indices
    weights = probs.gather(-1, experts)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts, probs


def expert_counts(experts: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Token copies routed to each expert (float32, shape (E,)); static shape for torch.compile."""
    flat = experts.flatten()
    return torch.zeros(n_experts, device=flat.device).index_add_(
        0, flat, torch.ones_like(flat, dtype=torch.float)
    )


def load_balancing_loss(probs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Switch/GShard: E * sum_e f_e * P_e, f_e the fraction of token copies routed to e, P_e its mean prob.

    1.0 when routing is uniform; the gradient reaches the router through P only.
    """
    f = counts / counts.sum().clamp(min=1)
    return probs.shape[-1] * (f * probs.mean(dim=0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's z-loss: mean over tokens of logsumexp(logits)^2, keeping router logits small."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


def router_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of the routing distribution's entropy (nats; log E when uniform)."""
    return -(probs * probs.clamp(min=1e-12).log()).sum(dim=-1).mean()


def sort_by_expert(experts: torch.Tensor, n_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, counts): token-copy indices sorted by expert (stable), copies per expert (int64)."""
    flat = experts.flatten()
    order = flat.argsort(stable=True)
    counts = torch.zeros(n_experts, dtype=torch.long, device=flat.device)
    return order, counts.index_add_(0, flat, torch.ones_like(flat))


def combine(outputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum over each token's k expert outputs: (N * k, D) and (N, k) -> (N, D)."""
    n, k = weights.shape
    return (outputs.view(n, k, -1) * weights.unsqueeze(-1).to(outputs.dtype)).sum(dim=1)


def looped_experts(experts: nn.ModuleList, x: torch.Tensor, weights, chosen) -> torch.Tensor:
    """The reference: each expert module on its own tokens. Every expert runs (maybe on no rows)."""
    flat, k = chosen.flatten(), chosen.shape[1]
    outputs = None
    for e, expert in enumerate(experts):
        rows = (flat == e).nonzero().squeeze(1)
        y = expert(x[rows // k])
        if outputs is None:
            outputs = y.new_zeros(flat.numel(), y.shape[-1])
        outputs = outputs.index_copy(0, rows, y)
    return combine(outputs, weights)


def _row_norm(x: torch.Tensor, weights: torch.Tensor, rows_expert: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of each row with its expert's norm weight (bittern.nn.RMSNorm's float32 math)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weights[rows_expert] * xf.to(x.dtype)


def _bias(layers: list[nn.Module], y: torch.Tensor, rows_expert: torch.Tensor) -> torch.Tensor:
    """y plus each row's expert bias (the layers' biases, if they have them)."""
    if layers[0].bias is None:
        return y
    return y + torch.stack([layer.bias for layer in layers])[rows_expert].to(y.dtype)


def grouped_linear(
    layers: list[nn.Module], x: torch.Tensor, counts: torch.Tensor, rows_expert
) -> torch.Tensor:
    """Row block e of `x` (counts[e] rows, sorted by expert) through layers[e], as grouped GEMMs.

    BitLinear's math exactly: per-expert RMSNorm and per-row int8 activations, per-expert
    ternary weights, straight-through; nn.Linear (the twin) a plain grouped GEMM.
    """
    first = layers[0]
    if not (isinstance(first, BitLinear) and first.quantized):
        y = grouped_mm(x, torch.stack([layer.weight for layer in layers]), counts)
        return _bias(layers, y, rows_expert)
    if first.norm is not None:
        norm_w = torch.stack([layer.norm.weight for layer in layers])
        x = _row_norm(x, norm_w, rows_expert, first.norm.eps)
    if experts_take_fast_path(layers, x):
        o = first.options
        w = torch.stack([layer.weight for layer in layers])
        y = grouped_ternary_linear(x, w, counts, o.granularity, o.gamma_multiplier)
    else:
        xq = fake_quant_activations(x, first.act_lambda, first.options.ste)
        w = torch.stack([layer.quantized_weight() for layer in layers])
        y = grouped_mm(xq, w.to(xq.dtype), counts)
    return _bias(layers, y, rows_expert)


def _kept_codes_apply(experts: Sequence[nn.Module], xs: torch.Tensor) -> bool:
    """Whether the experts' three projections run from kept stacked codes (`grouped_bitlinear`)."""
    first = experts[0]
    gate = [e.gate_proj for e in experts]
    up = [e.up_proj for e in experts]
    down = [e.down_proj for e in experts]
    if not (isinstance(first.gate_proj, BitLinear) and first.gate_proj.quantized):
        return False
    if xs.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    projections = gate + up + down
    o, opts = first.gate_proj.kernel_options, first.gate_proj.options
    for layer in projections:
        if layer.kernel_options != o or layer.options != opts or not o.cache_codes:
            return False
    if (first.gate_proj.norm is None) != (first.up_proj.norm is None):
        return False
    return experts_take_fast_path(projections, xs)


def _norm_weights(layers: list[list[nn.Module]]) -> torch.Tensor | None:
    """(P, E, K) stacked norm weights of each part's expert layers (None: they have no norms)."""
    if layers[0][0].norm is None:
        return None
    return torch.stack([torch.stack([layer.norm.weight for layer in part]) for part in layers])


def kept_codes_rows(
    experts: Sequence[nn.Module], xs: torch.Tensor, counts: torch.Tensor, codes: dict[str, ExpertCodes]
) -> torch.Tensor:
    """`grouped_rows` from stacked codes kept in `codes` ("gate_up", "down"): gate and up as one GEMM."""
    rows_expert = None
    if experts[0].gate_proj.bias is not None or experts[0].ffn_sub_norm is not None:
        rows_expert = torch.repeat_interleave(
            torch.arange(len(experts), device=xs.device), counts, output_size=xs.shape[0]
        )
    gate = [e.gate_proj for e in experts]
    up = [e.up_proj for e in experts]
    down = [e.down_proj for e in experts]
    first = experts[0]
    eps = first.gate_proj.options.norm_eps
    w_gu, gamma_gu = codes["gate_up"].current([gate, up])
    weights = [layer.weight for layer in gate + up]
    gu = grouped_bitlinear(xs, _norm_weights([gate, up]), w_gu, gamma_gu, counts, weights, 2, eps)
    g, u = gu.split(gate[0].out_features, dim=1)
    g, u = _bias(gate, g, rows_expert), _bias(up, u, rows_expert)
    h = (F.relu(g).square() if first.squared_relu else F.silu(g)) * u
    norm_d, eps_d = _norm_weights([down]), eps
    if first.ffn_sub_norm is not None:
        sub_w = torch.stack([e.ffn_sub_norm.weight for e in experts])
        if down[0].norm is None:  # the sub-norm is the down projection's norm: fused with its quantization
            norm_d, eps_d = sub_w[None], first.ffn_sub_norm.eps
        else:
            h = _row_norm(h, sub_w, rows_expert, first.ffn_sub_norm.eps)
    w_d, gamma_d = codes["down"].current([down])
    y = grouped_bitlinear(h, norm_d, w_d, gamma_d, counts, [d.weight for d in down], 1, eps_d)
    return _bias(down, y, rows_expert)


def grouped_rows(
    experts: Sequence[nn.Module],
    xs: torch.Tensor,
    counts: torch.Tensor,
    codes: dict[str, ExpertCodes] | None = None,
    v1: bool = False,
) -> torch.Tensor:
    """Rows sorted by expert (counts[e] of them for experts[e]) through their FFNs, as grouped GEMMs.

    Ternary experts on the fast path run from the stacked codes kept in `codes` (made for this
    call where None): `kept_codes_rows`. Otherwise (or with `v1`) each projection is one
    `grouped_linear`.
    """
    if not v1 and _kept_codes_apply(experts, xs):
        return kept_codes_rows(experts, xs, counts, codes if codes is not None else new_expert_codes())
    return grouped_rows_v1(experts, xs, counts)


def new_expert_codes() -> dict[str, ExpertCodes]:
    """The kept codes of one MoE layer's experts: gate and up stacked together, and down."""
    return {"gate_up": ExpertCodes(), "down": ExpertCodes()}


def grouped_rows_v1(experts: Sequence[nn.Module], xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """`grouped_rows` with each projection one `grouped_linear`, ternary weights stacked per call."""
    rows_expert = torch.repeat_interleave(
        torch.arange(len(experts), device=xs.device), counts, output_size=xs.shape[0]
    )
    g = grouped_linear([e.gate_proj for e in experts], xs, counts, rows_expert)
    u = grouped_linear([e.up_proj for e in experts], xs, counts, rows_expert)
    first = experts[0]
    h = (F.relu(g).square() if first.squared_relu else F.silu(g)) * u
    if first.ffn_sub_norm is not None:
        sub_w = torch.stack([e.ffn_sub_norm.weight for e in experts])
        h = _row_norm(h, sub_w, rows_expert, first.ffn_sub_norm.eps)
    return grouped_linear([e.down_proj for e in experts], h, counts, rows_expert)


def grouped_experts(
    experts: nn.ModuleList,
    x: torch.Tensor,
    weights,
    chosen,
    codes: dict[str, ExpertCodes] | None = None,
    v1: bool = False,
) -> torch.Tensor:
    """All experts as grouped GEMMs over the token copies sorted by expert; equals `looped_experts`."""
    k = chosen.shape[1]
    order, counts = sort_by_expert(chosen, len(experts))
    ys = grouped_rows(list(experts), x[order // k], counts, codes, v1)
    outputs = torch.empty_like(ys).index_copy(0, order, ys)  # back to token-copy order
    return combine(outputs, weights)


class MoE(nn.Module):
    """Top-k mixture of `make_expert(name, width)` FFNs with a full-precision router, plus shared experts.

    `expert_bias` (balance = "bias") shifts which experts are chosen; the trainer moves it after
    each optimizer step (`update_expert_bias`). `expert_path` picks the loop or grouped GEMMs.
    """

    def __init__(self, cfg: ModelConfig, prefix: str, make_expert: Callable[[str, int], nn.Module]) -> None:
        super().__init__()
        self.n_experts, self.top_k = cfg.moe_experts, cfg.moe_top_k
        self.balance, self.normalize = cfg.moe_balance, cfg.moe_norm_topk
        self.aux_weight = cfg.moe_aux_loss if cfg.moe_balance == "aux_loss" else 0.0
        self.z_weight, self.bias_rate = cfg.moe_z_loss, cfg.moe_bias_rate
        self.gate = nn.Linear(cfg.dim, self.n_experts, bias=False)  # the router (HF's name for it)
        width = cfg.expert_ffn_dim
        self.experts = nn.ModuleList(
            make_expert(f"{prefix}.experts.{e}", width) for e in range(self.n_experts)
        )
        shared = cfg.moe_shared_experts
        self.shared_expert = make_expert(f"{prefix}.shared_expert", shared * width) if shared else None
        self.register_buffer("expert_bias", torch.zeros(self.n_experts))
        self.expert_path = "grouped"
        self.expert_codes = new_expert_codes()  # the ternary experts' stacked codes (plain attributes)
        self.aux_loss: torch.Tensor | None = None
        self.stats: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        h = x.reshape(-1, shape[-1])
        logits = self.gate(h)
        bias = self.expert_bias if self.balance == "bias" else None
        weights, chosen, probs = route(logits, self.top_k, bias, self.normalize)
        if isinstance(self.experts, nn.ModuleList):
            grouped = self.expert_path != "loop" and isinstance(self.experts[0].gate_proj, nn.Linear)
            if grouped:
                v1 = self.expert_path == "grouped-v1"
                y = grouped_experts(self.experts, h, weights, chosen, self.expert_codes, v1)
            else:  # frozen (exported) experts: the loop
                y = looped_experts(self.experts, h, weights, chosen)
        else:  # experts held elsewhere run themselves (bittern.distributed.expert_parallel.ExpertShard)
            y = self.experts(h, weights, chosen)
        if self.shared_expert is not None:
            y = y + self.shared_expert(h)
        self._record(logits, probs, chosen)
        return y.view(*shape[:-1], y.shape[-1])

    def _record(self, logits: torch.Tensor, probs: torch.Tensor, chosen: torch.Tensor) -> None:
        counts = expert_counts(chosen, self.n_experts)
        balance, z = load_balancing_loss(probs, counts), router_z_loss(logits)
        self.aux_loss = self.aux_weight * balance + self.z_weight * z
        scalars = torch.stack([router_entropy(probs), balance, z, counts.new_ones(())])  # 1: one forward
        self.stats = torch.cat([counts, probs.mean(dim=0), scalars]).detach()


def moe_layers(model: nn.Module) -> list[tuple[str, MoE]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MoE)]


def moe_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """The summed auxiliary loss of the last forward's MoE layers (None for a dense model); clears it."""
    return layers_aux_loss(m for _, m in moe_layers(model))


def layers_aux_loss(layers: Iterable[MoE]) -> torch.Tensor | None:
    """`moe_aux_loss` over MoE layers already found (the monitor keeps its list)."""
    terms = []
    for m in layers:
        if m.aux_loss is not None:
            terms.append(m.aux_loss)
            m.aux_loss = None
    return torch.stack(terms).sum() if terms else None


def set_expert_path(model: nn.Module, path: str) -> None:
    """Run every MoE layer's experts as a loop (the reference) or as grouped GEMMs."""
    if path not in EXPERT_PATHS:
        raise ValueError(f"expert path must be one of {EXPERT_PATHS}, got {path!r}")
    for _, m in moe_layers(model):
        m.expert_path = path


@torch.no_grad()
def update_expert_bias(moe: MoE, counts: torch.Tensor, rate: float) -> None:
    """DeepSeek-V3's loss-free balancing: b_e += rate * sign(mean load - load_e) after each step."""
    counts = counts.to(moe.expert_bias.device, torch.float32)
    moe.expert_bias.add_(rate * torch.sign(counts.mean() - counts))


def active_params(model: nn.Module) -> int:
    """Parameters one token uses: all but the routed experts past k of every MoE layer.

    Under expert parallelism a rank holds only some experts: counted from those it holds.
    """
    n = sum(p.numel() for p in model.parameters())
    for _, m in moe_layers(model):
        held = len(list(m.experts.children()))  # all E, or this rank's E / world
        per_expert = sum(p.numel() for p in m.experts.parameters()) / held
        n -= int(per_expert * (held - m.top_k))
    return n
