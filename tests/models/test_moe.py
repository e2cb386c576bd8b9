"""The mixture-of-experts layer: routing and balancing math against plain loops, grouped == loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bittern.errors import BitternError
from bittern.models import ModelConfig, build_model
from bittern.models.moe import (
    MoE,
    active_params,
    expert_counts,
    load_balancing_loss,
    moe_aux_loss,
    moe_layers,
    route,
    router_entropy,
    router_z_loss,
    set_expert_path,
    update_expert_bias,
)


def moe_config(**kw) -> ModelConfig:
    base = dict(
        vocab_size=64, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=32, moe_experts=4
    )
    return ModelConfig(**(base | kw)).resolved()


def test_route_matches_a_per_token_loop():
    torch.manual_seed(0)
    logits, bias = torch.randn(20, 6), torch.randn(6) * 0.1
    weights, experts, probs = route(logits, 2, bias)
    for t in range(20):
        p = [math.exp(v) for v in logits[t].tolist()]
        p = [v / sum(p) for v in p]
        chosen = sorted(range(6), key=lambda e: -(p[e] + bias[e].item()))[:2]  # the bias picks ...
        assert experts[t].tolist() == chosen
        total = sum(p[e] for e in chosen)  # ... the probabilities weigh, renormalized
        assert weights[t].tolist() == pytest.approx([p[e] / total for e in chosen], rel=1e-6)
        assert probs[t].tolist() == pytest.approx(p, rel=1e-6)
    w_raw, _, _ = route(logits, 2, normalize=False)
    assert w_raw.sum(-1).lt(1).all()


def test_balancing_z_and_entropy_losses_against_their_formulas():
    torch.manual_seed(0)
    logits = torch.randn(30, 4)
    _, experts, probs = route(logits, 2)
    counts = expert_counts(experts, 4)
    loop_counts = [sum(int(e in row) for row in experts.tolist()) for e in range(4)]
    assert counts.tolist() == loop_counts
    f = [c / 60 for c in loop_counts]
    P = [sum(probs[t, e].item() for t in range(30)) / 30 for e in range(4)]
    assert load_balancing_loss(probs, counts).item() == pytest.approx(
        4 * sum(a * b for a, b in zip(f, P, strict=True))
    )
    lse = [math.log(sum(math.exp(v) for v in row)) for row in logits.tolist()]
    assert router_z_loss(logits).item() == pytest.approx(sum(v * v for v in lse) / 30, rel=1e-6)
    ent = [-sum(p * math.log(p) for p in row) for row in probs.tolist()]
    assert router_entropy(probs).item() == pytest.approx(sum(ent) / 30, rel=1e-6)
    uniform = torch.full((8, 4), 0.25)
    assert load_balancing_loss(uniform, torch.full((4,), 4.0)).item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(quant="none"),
        dict(arch="bitnet", moe_shared_experts=1),
        dict(weight_granularity="channel", moe_ffn_dim=32, moe_top_k=1),
    ],
    ids=["ternary", "twin", "bitnet-shared", "channel-top1"],
)
def test_grouped_experts_equal_the_per_expert_loop(kw):
    torch.manual_seed(0)
    model = build_model(moe_config(**kw))
    x = torch.randint(0, 64, (3, 16))
    outs, grads = [], []
    for path in ("loop", "grouped"):
        set_expert_path(model, path)
        model.zero_grad()
        y = model(x)
        (y.square().mean() + moe_aux_loss(model)).backward()
        outs.append(y)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_moe_equals_a_plain_loop_over_tokens():
    torch.manual_seed(0)
    cfg = moe_config(quant="none", moe_shared_experts=1)
    moe = build_model(cfg).layers[0].mlp
    x = torch.randn(10, 32)
    y = moe(x)
    for t in range(10):
        p = F.softmax(x[t] @ moe.gate.weight.T, dim=-1)
        top = p.topk(2)
        expect = sum(
            w / top.values.sum() * moe.experts[e](x[t]) for w, e in zip(top.values, top.indices, strict=True)
        )
        torch.testing.assert_close(y[t], expect + moe.shared_expert(x[t]), rtol=1e-5, atol=1e-6)


def test_aux_loss_reaches_the_router_and_is_taken_once():
    torch.manual_seed(0)
    model = build_model(moe_config(moe_aux_loss=0.1, moe_z_loss=0.01))
    model(torch.randint(0, 64, (2, 8)))
    aux = moe_aux_loss(model)
    m = model.layers[0].mlp
    assert aux.item() > 0
    aux.backward()
    assert m.gate.weight.grad.abs().sum() > 0
    assert moe_aux_loss(model) is None  # cleared: a second reader does not add it twice


def test_bias_balancing_moves_toward_the_mean_and_only_picks():
    m = build_model(moe_config(moe_balance="bias", moe_bias_rate=0.5)).layers[0].mlp
    update_expert_bias(m, torch.tensor([10.0, 0.0, 5.0, 5.0]), m.bias_rate)
    assert m.expert_bias.tolist() == [-0.5, 0.5, 0.0, 0.0]
    assert "layers.0.mlp.expert_bias" in build_model(moe_config()).state_dict()  # saved, resumed
    logits = torch.zeros(4, 4)
    w, e, _ = route(logits, 1, m.expert_bias)
    assert (e == 1).all() and w.eq(1).all()


def test_layers_and_active_params():
    cfg = moe_config(n_layers=4, moe_layers="every_2", moe_ffn_dim=32, moe_top_k=2, quant="none")
    assert cfg.moe_layer_indices() == [1, 3]
    model = build_model(cfg)
    assert [n for n, _ in moe_layers(model)] == ["layers.1.mlp", "layers.3.mlp"]
    assert not isinstance(model.layers[0].mlp, MoE)
    dense = build_model(moe_config(n_layers=4, moe_experts=0, quant="none"))
    # 2 of 4 experts of width 32 are the dense FFN of width 64: only the two routers are extra
    assert active_params(model) - active_params(dense) == 2 * 32 * 4
    assert moe_config(moe_layers="0, 1").moe_layer_indices() == [0, 1]


@pytest.mark.parametrize(
    "kw",
    [dict(moe_top_k=5), dict(moe_balance="loss"), dict(moe_layers="every_x"), dict(moe_layers="7")],
)
def test_bad_moe_config_is_one_clear_error(kw):
    with pytest.raises(BitternError, match="model.moe"):
        moe_config(**kw)
