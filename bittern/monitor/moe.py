"""Router health of a mixture-of-experts run: expert load, entropy, the balancing losses, dead experts.

`MoEMonitor` is the trainer's: after each micro-batch `collect` takes the MoE layers' auxiliary
loss (for the trainer's loss) and adds up their router statistics; `end_step` sums them over
micro-batches and ranks, moves DeepSeek-V3's routing biases (balance = "bias") and counts, per
expert, the steps in a row it got no token. Logged per layer as `moe/<layer>/<stat>`:

- `load/<e>`: fraction of the step's token copies routed to expert e (1 / E when balanced);
- `max_load`: the largest load times E (1.0 when balanced);
- `entropy`: mean entropy of the routing distribution (nats; log E when uniform);
- `balance_loss`: the Switch loss E * sum f_e P_e (1.0 when balanced), `z_loss`: the router z-loss;
- `dead`: experts with no token this step.

and overall as `moe/<stat>` (the mean over layers). The ternary health of every expert's
projections is TernaryHealth's (`health/layers.<i>.mlp.experts.<e>.<proj>/...`).
"""

from __future__ import annotations

import torch
import torch.distributed as tdist
from torch import nn

from bittern.models.moe import MoE, layers_aux_loss, moe_layers, update_expert_bias


class MoEMonitor:
    """Per-step router statistics of every MoE layer of `model`; see the module docstring."""

    def __init__(self, model: nn.Module, dead_after: int = 100) -> None:
        self.layers: list[tuple[str, MoE]] = moe_layers(model)
        self.dead_after = dead_after
        self.sums: dict[str, torch.Tensor] = {}
        self.idle = {name: torch.zeros(m.n_experts, dtype=torch.long) for name, m in self.layers}
        self.last: dict[str, dict] = {}

    def __bool__(self) -> bool:
        return bool(self.layers)

    def collect(self) -> torch.Tensor:
        """The last forward's summed auxiliary loss (zero if none); its statistics added to the step's."""
        for name, m in self.layers:
            if m.stats is not None:
                self.sums[name] = self.sums.get(name, 0) + m.stats
                m.stats = None
        aux = layers_aux_loss(m for _, m in self.layers)
        return aux if aux is not None else torch.zeros(())

    def end_step(self, dist=None, update_bias: bool = True) -> None:
        """Close the step: sum over ranks, move routing biases, count idle steps; ready `record`/`alerts`."""
        if not self.sums:
            return
        names = [n for n, _ in self.layers if n in self.sums]
        packed = torch.stack([self.sums[n] for n in names])
        if dist is not None and dist.enabled:
            tdist.all_reduce(packed)
        self.sums, self.last = {}, {}
        layers = dict(self.layers)
        for name, row in zip(names, packed.cpu(), strict=True):
            m = layers[name]
            e = m.n_experts
            counts, prob_sum, (entropy, balance, z, forwards) = row[:e], row[e : 2 * e], row[2 * e :]
            if update_bias and m.balance == "bias":
                update_expert_bias(m, counts, m.bias_rate)
            self.idle[name] = torch.where(counts == 0, self.idle[name] + 1, 0)
            self.last[name] = {
                "counts": counts,
                "load": counts / counts.sum().clamp(min=1),
                "router_prob": prob_sum / forwards,
                "entropy": entropy,
                "balance": balance,
                "z": z,
                "n": forwards,
            }

    def record(self) -> dict[str, float]:
        """The last step's statistics as metrics (empty before the first step)."""
        out: dict[str, float] = {}
        if not self.last:
            return out
        for name, s in self.last.items():
            layer = name.removesuffix(".mlp")
            e = s["load"].numel()
            out |= {f"moe/{layer}/load/{i}": float(v) for i, v in enumerate(s["load"])}
            out[f"moe/{layer}/max_load"] = float(s["load"].max() * e)
            out[f"moe/{layer}/dead"] = float((s["counts"] == 0).sum())
            for key in ("entropy", "balance", "z"):
                out[f"moe/{layer}/{_NAMES[key]}"] = float(s[key] / s["n"])
        for stat in ("max_load", "dead", "entropy", "balance_loss", "z_loss"):
            vals = [v for k, v in out.items() if k.endswith(f"/{stat}")]
            out[f"moe/{stat}"] = sum(vals) / len(vals)
        return out

    def alerts(self) -> list[str]:
        """One message per expert that has just gone `dead_after` steps without a token."""
        if self.dead_after <= 0:
            return []
        messages = []
        for name, idle in self.idle.items():
            for e in (idle == self.dead_after).nonzero().flatten().tolist():
                messages.append(f"dead expert: {name}.experts.{e} got no tokens for {self.dead_after} steps")
        return messages


_NAMES = {"entropy": "entropy", "balance": "balance_loss", "z": "z_loss"}
