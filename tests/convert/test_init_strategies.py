"""init.strategy: lambda patterns per block at chosen steps, and loading pretrained weights."""

from __future__ import annotations

import pytest
import torch

from bittern.config import InitConfig
from bittern.errors import BitternError
from bittern.models import ModelConfig, Transformer
from bittern.nn import BitLinear
from bittern.train.init import LayerLambdas, block_lambdas, init_model_config, load_init, validate_init
from tests.convert.conftest import make_hf_model


def _cfg(**kw) -> InitConfig:
    return InitConfig(**kw)


def _tiny(n_layers: int = 5, **kw) -> Transformer:
    cfg = ModelConfig(dim=16, n_layers=n_layers, n_heads=2, n_kv_heads=1, ffn_dim=32, vocab_size=50, **kw)
    return Transformer(cfg.resolved())


@pytest.mark.parametrize("strategy", ["random", "pretrained"])
def test_random_and_pretrained_quantize_at_once(strategy):
    for step in (0, 1, 500):
        assert block_lambdas(step, 3, _cfg(strategy=strategy)) == [1.0, 1.0, 1.0]


def test_progressive_linear_over_progressive_steps():
    cfg = _cfg(strategy="progressive", progressive_steps=200)
    expected = {0: 0.0, 50: 0.25, 100: 0.5, 199: 0.995, 200: 1.0, 1000: 1.0}
    for step, lam in expected.items():
        assert block_lambdas(step, 4, cfg) == pytest.approx([lam] * 4)


def test_layerwise_bottom_up_groups():
    cfg = _cfg(strategy="layerwise", layerwise_order="bottom_up", layerwise_group=2, layerwise_interval=100)
    assert block_lambdas(0, 5, cfg) == [1, 1, 0, 0, 0]
    assert block_lambdas(99, 5, cfg) == [1, 1, 0, 0, 0]
    assert block_lambdas(100, 5, cfg) == [1, 1, 1, 1, 0]
    assert block_lambdas(250, 5, cfg) == [1, 1, 1, 1, 1]
    assert validate_init(cfg, 5, has_source=True) == 200


def test_layerwise_top_down_one_at_a_time():
    cfg = _cfg(strategy="layerwise", layerwise_order="top_down", layerwise_group=1, layerwise_interval=10)
    assert block_lambdas(0, 4, cfg) == [0, 0, 0, 1]
    assert block_lambdas(15, 4, cfg) == [0, 0, 1, 1]
    assert block_lambdas(29, 4, cfg) == [0, 1, 1, 1]
    assert block_lambdas(30, 4, cfg) == [1, 1, 1, 1]
    assert validate_init(cfg, 4, has_source=True) == 30


def _layer_lambdas(model) -> dict[int, tuple[float, float]]:
    """Block index -> (weight lambda, act lambda), checking every BitLinear of a block agrees."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, BitLinear):
            block = int(name.split(".")[1])
            pair = (m.weight_lambda.item(), m.act_lambda.item())
            assert out.setdefault(block, pair) == pair
    return out


def test_apply_sets_every_bitlinear_of_each_block():
    model = _tiny(5)
    cfg = _cfg(strategy="layerwise", layerwise_group=2, layerwise_interval=100)
    mean = LayerLambdas(cfg, 5).apply(model, 100)
    assert _layer_lambdas(model) == {0: (1, 1), 1: (1, 1), 2: (1, 1), 3: (1, 1), 4: (0, 0)}
    assert mean == pytest.approx(0.8)
    LayerLambdas(cfg, 5, activations=False).apply(model, 0)
    assert _layer_lambdas(model) == {0: (1, 1), 1: (1, 1), 2: (0, 1), 3: (0, 1), 4: (0, 1)}


def test_progressive_schedule_caps_the_strategy():
    model = _tiny(2)
    lams = LayerLambdas(_cfg(strategy="progressive", progressive_steps=100), 2)
    lams.apply(model, 80, cap=0.5)  # the progressive.* schedule (or plateau fallback) says 0.5
    assert _layer_lambdas(model) == {0: (0.5, 0.5), 1: (0.5, 0.5)}
    LayerLambdas(_cfg(strategy="random"), 2).apply(model, 0, cap=0.25)
    assert _layer_lambdas(model) == {0: (0.25, 0.25), 1: (0.25, 0.25)}


def test_validate_init_errors():
    with pytest.raises(BitternError, match="needs a checkpoint"):
        validate_init(_cfg(strategy="pretrained"), 4, has_source=False)
    with pytest.raises(BitternError, match="layerwise_group"):
        validate_init(_cfg(strategy="layerwise", layerwise_group=0), 4, has_source=True)
    with pytest.raises(BitternError, match="progressive_steps"):
        validate_init(_cfg(strategy="progressive", progressive_steps=-1), 4, has_source=True)
    assert validate_init(_cfg(strategy="progressive", progressive_steps=300), 4, has_source=True) == 300
    assert validate_init(_cfg(), 4, has_source=False) == 0


@pytest.mark.parametrize("use_run", [True, False])
def test_load_init_into_ternary_student(use_run, llama_run, llama_dir):
    source = llama_run if use_run else llama_dir
    student_cfg = init_model_config(ModelConfig(quant="ternary", weight_granularity="channel"), source)
    assert (student_cfg.dim, student_cfg.n_layers, student_cfg.vocab_multiple) == (32, 2, 1)
    assert student_cfg.quant == "ternary" and student_cfg.weight_granularity == "channel"
    student = Transformer(student_cfg)
    load_init(student, source)
    hf = make_hf_model("llama").state_dict()
    for name, p in student.named_parameters():
        if name.endswith("_proj.norm.weight"):
            torch.testing.assert_close(p, torch.ones_like(p))
        else:
            torch.testing.assert_close(
                p, hf[name if name == "lm_head.weight" else f"model.{name}"], rtol=0, atol=0
            )


def test_load_init_shape_mismatch(llama_run):
    student = _tiny(2, vocab_multiple=1)
    with pytest.raises(BitternError, match="has shape"):
        load_init(student, llama_run)


def test_load_init_missing_source(tmp_path):
    with pytest.raises(BitternError, match="model source not found"):
        load_init(_tiny(2), tmp_path / "nowhere")
