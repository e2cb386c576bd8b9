"""Upcycling a dense model into a mixture of experts computes the dense model's function."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import bittern
from bittern.convert.upcycle import upcycle_state_dict, upcycled_absent
from bittern.convert.weights import copy_weights, quantizer_norm
from bittern.errors import BitternError
from bittern.models import ModelConfig, build_model
from bittern.train import train
from bittern.train.init import init_model_config, load_init


def dense_config(**kw) -> ModelConfig:
    base = dict(vocab_size=64, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=32)
    return ModelConfig(**(base | kw)).resolved()


def upcycled(dense_cfg: ModelConfig, **moe):
    torch.manual_seed(0)
    dense = build_model(dense_cfg)
    torch.manual_seed(1)
    model = build_model(replace(dense_cfg, **moe).resolved())
    state = upcycle_state_dict(dense.state_dict(), model.config)
    copy_weights(model, state, "test", upcycled_absent(quantizer_norm))
    return dense, model


@pytest.mark.parametrize(
    "kw", [dict(), dict(quant="none"), dict(arch="bitnet")], ids=["ternary", "twin", "bitnet-sublayer"]
)
def test_copies_with_normalized_top_k_compute_the_dense_ffn(kw):
    dense, moe = upcycled(dense_config(**kw), moe_experts=4, moe_top_k=2, moe_layers="all")
    x = torch.randint(0, 64, (2, 16))
    torch.testing.assert_close(moe(x), dense(x), rtol=1e-5, atol=1e-5)
    assert not torch.equal(moe.layers[0].mlp.gate.weight, torch.zeros(4, 32))  # the router: random


def test_split_experts_with_a_uniform_router_compute_the_dense_ffn():
    dense, moe = upcycled(dense_config(quant="none"), moe_experts=4, moe_top_k=2, moe_ffn_dim=32)
    w0 = moe.layers[0].mlp.experts[2].gate_proj.weight
    torch.testing.assert_close(w0, dense.layers[0].mlp.gate_proj.weight[:32])  # expert 2: slice 0
    x = torch.randint(0, 64, (2, 16))
    for layer in moe.layers:  # equal weights, and a bias that sends every token to experts 0 and 1
        layer.mlp.gate.weight.data.zero_()
        layer.mlp.balance = "bias"
        layer.mlp.expert_bias.copy_(torch.tensor([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(moe(x), dense(x), rtol=1e-5, atol=1e-5)


def test_a_width_that_does_not_divide_is_one_clear_error():
    with pytest.raises(BitternError, match="not a multiple of model.moe_ffn_dim"):
        upcycled(dense_config(), moe_experts=4, moe_ffn_dim=48)


def test_init_from_a_dense_run_upcycles(tiny_config, tmp_path):
    train(tiny_config(train={"steps": 1, "eval_every": 0}), tmp_path / "dense", progress=False)
    cfg = tiny_config(model={"moe_experts": 4, "moe_top_k": 2}).model
    model = build_model(init_model_config(cfg, tmp_path / "dense"))
    load_init(model, tmp_path / "dense")
    dense, _ = bittern.load(tmp_path / "dense")
    torch.testing.assert_close(
        model.layers[1].mlp.experts[3].down_proj.weight, dense.layers[1].mlp.down_proj.weight
    )
    x = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(model(x), dense(x), rtol=1e-5, atol=1e-5)
