"""Layer-wise LR parameter groups: exact per-parameter lr and weight decay."""

from __future__ import annotations

import pytest
from torch import nn

from bittern.config import OptimConfig
from bittern.models import ModelConfig, build_model
from bittern.train.optim import apply_lr_and_wd, build_optimizer, param_groups


def _model(tie: bool = False) -> nn.Module:
    cfg = ModelConfig(
        preset="tiny", dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=32, vocab_size=100
    )
    cfg.tie_embeddings = tie
    return build_model(cfg.resolved())


def _by_name(model: nn.Module, optimizer) -> dict[str, dict]:
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    return {n: group_of[id(p)] for n, p in model.named_parameters()}


OPT = OptimConfig(
    lr=1e-3,
    weight_decay=0.1,
    layer_lr_decay=0.5,
    attn_lr_mult=2.0,
    mlp_lr_mult=3.0,
    embed_lr_mult=0.25,
    head_lr_mult=4.0,
)


def test_layerwise_lr_and_decay():
    model = _model()
    opt = build_optimizer(model, OPT)
    apply_lr_and_wd(opt, 1e-3, 0.1)
    g = _by_name(model, opt)
    expected = {
        "layers.0.self_attn.q_proj.weight": (1e-3 * 0.5 * 2, 0.1),
        "layers.1.self_attn.q_proj.weight": (1e-3 * 2, 0.1),
        "layers.0.self_attn.o_proj.weight": (1e-3 * 0.5 * 2, 0.1),
        "layers.0.mlp.up_proj.weight": (1e-3 * 0.5 * 3, 0.1),
        "layers.1.mlp.down_proj.weight": (1e-3 * 3, 0.1),
        "layers.0.self_attn.q_proj.norm.weight": (1e-3 * 0.5, 0.0),
        "layers.0.input_layernorm.weight": (1e-3 * 0.5, 0.0),
        "layers.1.post_attention_layernorm.weight": (1e-3, 0.0),
        "embed_tokens.weight": (1e-3 * 0.25, 0.0),
        "lm_head.weight": (1e-3 * 4, 0.1),
        "norm.weight": (1e-3, 0.0),
    }
    for name, (lr, wd) in expected.items():
        assert g[name]["lr"] == pytest.approx(lr), name
        assert g[name]["weight_decay"] == wd, name


def test_initial_lr_already_multiplied():
    model = _model()
    g = _by_name(model, build_optimizer(model, OPT))
    assert g["layers.0.self_attn.q_proj.weight"]["lr"] == pytest.approx(1e-3)
    assert g["lm_head.weight"]["lr"] == pytest.approx(4e-3)


@pytest.mark.parametrize("tie", [False, True])
def test_every_param_once_and_no_decay_set(tie):
    model = _model(tie)
    groups = param_groups(model, 0.1, OPT)
    ids = [id(p) for grp in groups for p in grp["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert len({(grp["weight_decay"], grp["lr_mult"]) for grp in groups}) == len(groups)
    for grp in groups:
        assert set(grp) >= {"params", "weight_decay", "lr_mult", "name"}
    no_decay = {id(p) for grp in groups if grp["weight_decay"] == 0.0 for p in grp["params"]}
    expected = {id(p) for p in model.parameters() if p.dim() == 1} | {id(model.embed_tokens.weight)}
    assert no_decay == expected


def test_tied_head_follows_embedding():
    model = _model(tie=True)
    assert model.lm_head.weight is model.embed_tokens.weight
    opt = build_optimizer(model, OPT)
    apply_lr_and_wd(opt, 1e-3, 0.1)
    (grp,) = [g for g in opt.param_groups if any(p is model.lm_head.weight for p in g["params"])]
    assert grp["lr"] == pytest.approx(0.25e-3) and grp["weight_decay"] == 0.0


def test_apply_lr_and_wd_stage_switch():
    model = _model()
    opt = build_optimizer(model, OPT)
    apply_lr_and_wd(opt, 2e-3, 0.0)
    g = _by_name(model, opt)
    assert g["layers.1.mlp.up_proj.weight"]["weight_decay"] == 0.0
    assert g["layers.1.mlp.up_proj.weight"]["lr"] == pytest.approx(6e-3)
    apply_lr_and_wd(opt, 2e-3, 0.05)
    assert g["layers.1.mlp.up_proj.weight"]["weight_decay"] == 0.05
    assert g["norm.weight"]["weight_decay"] == 0.0


def test_any_module_falls_back():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    groups = param_groups(model, 0.1, OPT)
    assert [g["lr_mult"] for g in groups] == [1.0, 1.0]
    decay = {id(p) for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    assert decay == {id(model[1].weight)}
    opt = build_optimizer(model, OPT)
    assert all(g["lr"] == pytest.approx(1e-3) for g in opt.param_groups)


def test_default_config_keeps_two_groups():
    model = _model()
    opt = build_optimizer(model, OptimConfig())
    assert [g["name"] for g in opt.param_groups] == ["decay", "no_decay"]
    assert all(g["lr"] == OptimConfig().lr for g in opt.param_groups)
    assert [len(g["params"]) for g in param_groups(model, 0.1)] == [
        len(g["params"]) for g in opt.param_groups
    ]
