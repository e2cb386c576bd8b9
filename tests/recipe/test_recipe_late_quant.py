"""Late quantization: steps at lambda 0 are the nn.Linear twin's steps, the switch to ternary keeps
the optimizer's state, and a resume across the switch is exact."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import bittern
from bittern.monitor import read_metrics
from bittern.nn import BitLinear, RMSNorm
from bittern.train import Trainer, train

LATE = {"schedule": "stepped", "start_frac": 0.5, "interval": 1, "delta": 0.25}  # switch at step 10


def losses(run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}


def test_lambda_zero_is_linear_exactly():
    """At lambda 0 forward and gradients are F.linear's (after the layer's own norm), bit for bit,
    and no quantizer runs."""
    torch.manual_seed(0)
    for norm in (False, True):
        layer = BitLinear(48, 40, norm=norm)
        layer.set_lambda(0.0)
        x = torch.randn(3, 5, 48, requires_grad=True)
        ref_w = layer.weight.detach().clone().requires_grad_(True)
        ref_x = x.detach().clone().requires_grad_(True)
        h = RMSNorm(48)(ref_x) if norm else ref_x
        ref = F.linear(h, ref_w)
        real_ternarize = bittern.quant.ste.ternarize
        bittern.quant.ste.ternarize = None  # any quantizer call would fail
        try:
            out = layer(x)
        finally:
            bittern.quant.ste.ternarize = real_ternarize
        assert torch.equal(out, ref)
        g = torch.randn_like(out)
        out.backward(g)
        ref.backward(g)
        assert torch.equal(layer.weight.grad, ref_w.grad)
        assert torch.equal(x.grad, ref_x.grad)


def test_lambda_zero_activations_only():
    """progressive.activations=false: act lambda stays 1 while the weight's is 0."""
    torch.manual_seed(1)
    layer = BitLinear(32, 16, norm=False)
    layer.set_lambda(0.0, 1.0)
    x = torch.randn(4, 32)
    xq = bittern.quant.dequantize_activations(*bittern.quant.quantize_activations(x))
    assert torch.equal(layer(x), F.linear(xq, layer.weight))


def test_full_precision_phase_equals_twin(tiny_config, tmp_path):
    """Sub-layer norms, lambda 0 until the switch: the same losses as the nn.Linear twin, bit for bit."""
    model = {"norm_placement": "sublayer"}
    late = tiny_config(model=model, progressive=LATE, checkpoint={"every": 0})
    twin = tiny_config(model={**model, "quant": "none"}, checkpoint={"every": 0})
    Trainer(late, tmp_path / "late", progress=False).run(until=10)
    Trainer(twin, tmp_path / "twin", progress=False).run(until=10)
    a, b = losses(tmp_path / "late"), losses(tmp_path / "twin")
    assert list(a) == list(range(1, 11))
    assert a == b


def test_switch_keeps_optimizer_state(tiny_config, tmp_path):
    """The optimizer that ran the full-precision phase runs on through the switch: its step count
    and moments continue (not rebuilt), and the model is quantized after it."""
    trainer = Trainer(
        tiny_config(progressive=LATE, checkpoint={"every": 0}), tmp_path / "run", progress=False
    )
    opt, seen = trainer.optimizer, {}
    real_step = opt.step

    def step(*args, **kwargs):  # snapshot the state after the steps on each side of the switch
        out = real_step(*args, **kwargs)
        if trainer.step + 1 in (9, 11):
            seen[trainer.step + 1] = {
                id(p): (s["step"].item(), s["exp_avg_sq"].clone()) for p, s in opt.state.items()
            }
        return out

    opt.step = step
    trainer.run(until=11)
    assert trainer.optimizer is opt and seen.keys() == {9, 11}
    for key, (count, sq) in seen[11].items():
        count9, sq9 = seen[9][key]
        assert (count9, count) == (9, 11)
        # beta2 = 0.95: two more steps keep at least 0.95**2 of the old second moment
        assert torch.all(sq >= 0.95**2 * sq9 * (1 - 1e-6))
    layers = [m for m in trainer.model.modules() if isinstance(m, BitLinear) and m.quantized]
    assert layers and all(m.weight_lambda.item() == 0.25 and m.lambda_zero == (False, False) for m in layers)


def test_resume_across_switch_is_exact(tiny_config, tmp_path):
    """Stop in the full-precision phase, resume, cross the switch: the same run as straight through."""
    cfg = tiny_config(progressive=LATE, checkpoint={"every": 0})
    train(cfg, tmp_path / "straight", progress=False)
    Trainer(cfg, tmp_path / "split", progress=False).run(until=7)
    Trainer(cfg, tmp_path / "split", resume=True, progress=False).run()
    assert losses(tmp_path / "split") == losses(tmp_path / "straight")
