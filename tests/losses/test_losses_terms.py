"""The extra loss terms against their formulas on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bittern.nn import BitLinear
from bittern.train.losses import (
    hard_token_ce,
    hidden_distill,
    layer_map,
    make_projections,
    margin_loss,
    pool_hidden,
    quant_regularizer,
)


def test_quant_regularizer_hand_computed():
    layer = BitLinear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, -0.5], [1.2, 0.0]]))
    # gamma = mean|W| = 0.45; W/gamma = (0.22, -1.11, 2.67, 0) -> grid (0, -1, 1, 0) * 0.45
    # residuals (0.1, -0.05, 0.75, 0): mean of squares = (0.01 + 0.0025 + 0.5625) / 4
    model = nn.Sequential(layer)
    reg = quant_regularizer(model)
    torch.testing.assert_close(reg, torch.tensor(0.14375))
    reg.backward()  # gamma and grid detached: d/dW = 2 (W - grid) / numel
    torch.testing.assert_close(layer.weight.grad, torch.tensor([[0.05, -0.025], [0.375, 0.0]]))


def test_quant_regularizer_means_over_layers():
    a, b = BitLinear(2, 1), BitLinear(4, 1)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, 3.0]]))  # gamma 2, W/gamma (0.5, 1.5) -> (0, 1): residual (1, 1)
        b.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0]]))  # on the grid: residual 0
    model = nn.Sequential(a, b, nn.Linear(3, 3))  # plain nn.Linear does not count
    torch.testing.assert_close(quant_regularizer(model), torch.tensor((1.0 + 0.0) / 2))


def test_quant_regularizer_per_channel():
    layer = BitLinear(2, 2, granularity="channel")
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.2, 0.6], [2.0, 0.0]]))
    # row gammas 0.4 and 1.0: W/gamma (0.5, 1.5) -> (0, 1) (half to even) and (2, 0) -> (1, 0)
    # residuals (0.2, 0.2, 1.0, 0.0): mean square = (0.04 + 0.04 + 1.0) / 4
    torch.testing.assert_close(quant_regularizer(nn.Sequential(layer)), torch.tensor(0.27))


def test_hard_token_ce_keeps_the_hardest_fraction():
    logits = torch.zeros(1, 4, 3)  # uniform: every token's CE is ln 3 ...
    logits[0, 0] = torch.tensor([10.0, 0.0, 0.0])  # ... except an easy one
    logits[0, 1] = torch.tensor([0.0, 10.0, 0.0])  # and a hard one (target 0)
    targets = torch.tensor([[0, 0, 1, 2]])
    ce = [
        -math.log(math.exp(10) / (math.exp(10) + 2)),
        -math.log(1 / (math.exp(10) + 2)),
        math.log(3),
        math.log(3),
    ]
    torch.testing.assert_close(hard_token_ce(logits, targets, 1.0), torch.tensor(sum(ce) / 4))
    torch.testing.assert_close(hard_token_ce(logits, targets, 0.5), torch.tensor((ce[1] + ce[2]) / 2))
    torch.testing.assert_close(hard_token_ce(logits, targets, 0.3), torch.tensor((ce[1] + ce[2]) / 2))  # ceil
    torch.testing.assert_close(hard_token_ce(logits, targets, 0.01), torch.tensor(ce[1]))  # at least one


def test_layer_map_even():
    assert layer_map(4, 4) == [0, 1, 2, 3]
    assert layer_map(2, 4) == [1, 3]
    assert layer_map(3, 4) == [0, 1, 3]
    assert layer_map(3, 30) == [9, 19, 29]


def test_hidden_distill_same_width():
    s = [torch.ones(1, 2, 3), torch.zeros(1, 2, 3)]
    t = [torch.zeros(1, 2, 3), torch.full((1, 2, 3), 2.0), torch.full((1, 2, 3), 3.0), torch.zeros(1, 2, 3)]
    # student 0 -> teacher 1: mean (1-2)^2 = 1; student 1 -> teacher 3: 0; mean over layers 0.5
    torch.testing.assert_close(hidden_distill(s, t), torch.tensor(0.5))


def test_hidden_distill_with_projection():
    proj = make_projections(2, 3, 1)
    assert len(make_projections(4, 4, 3)) == 0
    with torch.no_grad():
        proj[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    s = [torch.tensor([[[1.0, 2.0]]], requires_grad=True)]
    t = [torch.tensor([[[1.0, 2.0, 0.0]]])]  # projected student (1, 2, 3): residual (0, 0, 3)
    loss = hidden_distill(s, t, proj)
    torch.testing.assert_close(loss, torch.tensor(3.0))
    loss.backward()
    assert proj[0].weight.grad is not None and s[0].grad is not None


def test_pool_hidden_is_unit_mean():
    h = torch.tensor([[[3.0, 0.0], [1.0, 0.0]], [[0.0, 2.0], [0.0, 4.0]]])
    torch.testing.assert_close(pool_hidden(h), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_margin_loss_formula():
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[0.0, 1.0], [1.0, 0.0], [3.0, 1.0]])
    # negatives: p rolled by one = p[2], p[0], p[1]
    d_ap = [1.0, 0.0, 3.0]
    d_an = [math.hypot(3, 1), math.hypot(1, 1), math.hypot(1, 1)]
    want = sum(max(0.0, x - y + 0.3) for x, y in zip(d_ap, d_an, strict=True)) / 3
    torch.testing.assert_close(margin_loss(a, p, 0.3), torch.tensor(want), atol=1e-5, rtol=1e-5)


def test_margin_loss_single_sequence_is_zero():
    assert margin_loss(torch.ones(1, 3), torch.zeros(1, 3), 0.3).item() == 0.0


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_hard_token_ce_ratio_one_is_cross_entropy(ratio):
    logits, targets = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    per = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    want = per.mean() if ratio == 1.0 else per.sort(descending=True).values[:5].mean()
    torch.testing.assert_close(hard_token_ce(logits, targets, ratio), want)
