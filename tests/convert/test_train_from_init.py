"""`bittern train --init RUN`: a converted model as the starting point, init strategies, distillation."""

from __future__ import annotations

import pytest
import torch

import bittern
from bittern.config import config_from_dict
from bittern.data.prepare import prepare_dataset
from bittern.monitor import read_metrics
from bittern.nn import bitlinear_layers
from bittern.train import Trainer


@pytest.fixture(scope="module")
def init_dataset(tmp_path_factory, corpus_folder, llama_run):
    out = tmp_path_factory.mktemp("init_ds") / "ds"
    return prepare_dataset(str(corpus_folder), out, tokenizer=str(llama_run / "tokenizer"), progress=False)


def make_config(dataset, **sections):
    base = {
        "model": {"quant": "ternary"},
        "data": {"path": str(dataset)},
        "train": {"steps": 6, "batch_size": 4, "seq_len": 16, "eval_every": 0, "eval_batches": 2},
        "checkpoint": {"every": 0},
        "log": {"every": 1, "tensorboard": False},
    }
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return config_from_dict(base)


def test_init_copies_the_converted_weights(init_dataset, llama_run, tmp_path):
    source, _ = bittern.load(llama_run)
    trainer = Trainer(
        make_config(init_dataset, init={"strategy": "pretrained"}),
        tmp_path / "run",
        progress=False,
        init=str(llama_run),
    )
    student = dict(trainer.model.named_parameters())
    for name, p in source.named_parameters():
        assert torch.equal(student[name].detach(), p.detach()), name
    assert trainer.cfg.model.dim == source.config.dim and trainer.cfg.model.quant == "ternary"


def test_layerwise_strategy_quantizes_blocks_in_turn(init_dataset, llama_run, tmp_path):
    cfg = make_config(init_dataset, init={"strategy": "layerwise", "layerwise_interval": 3})
    trainer = Trainer(cfg, tmp_path / "run", progress=False, init=str(llama_run))
    trainer.run(until=1)  # step 0 ran: the first block is quantized, the second not yet
    lambdas = {
        name.split(".")[1]: float(layer.weight_lambda) for name, layer in bitlinear_layers(trainer.model)
    }
    assert lambdas == {"0": 1.0, "1": 0.0}


def test_distillation_from_the_init_source(init_dataset, llama_run, tmp_path):
    cfg = make_config(init_dataset, loss={"distill": 0.5, "temperature": 2.0})
    trainer = Trainer(cfg, tmp_path / "run", progress=False, init=str(llama_run))
    trainer.run()
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert {"loss/ce", "loss/distill", "loss/total"} <= records[-1].keys()
    last = records[-1]
    assert last["loss/total"] == pytest.approx(0.5 * last["loss/ce"] + 0.5 * last["loss/distill"], rel=1e-5)
    assert all(p.grad is None for p in trainer.teacher.model.parameters())


def test_distillation_without_teacher_is_refused(init_dataset, tmp_path):
    from bittern.errors import BitternError

    with pytest.raises(BitternError, match="teacher"):
        Trainer(make_config(init_dataset, loss={"distill": 0.5}), tmp_path / "run", progress=False)


def test_norm_placement_none_makes_lambda_zero_the_source_model(init_dataset, llama_run, tmp_path):
    cfg = make_config(init_dataset, model={"norm_placement": "none"}, init={"strategy": "progressive"})
    trainer = Trainer(cfg, tmp_path / "run", progress=False, init=str(llama_run))
    trainer._apply_schedules()  # step 0 of the progressive strategy: lambda 0 everywhere
    source, _ = bittern.load(llama_run)
    x = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(trainer.model(x)[..., :300], source(x)[..., :300], atol=1e-5, rtol=1e-5)
