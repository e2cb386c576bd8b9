"""`train.compile`: the blocks compiled one by one (bittern.train.compiling) train as eager does."""

import pytest
import torch

from bittern.monitor import read_metrics
from bittern.train import train
from bittern.train.compiling import compile_blocks

# trace with torch.compile but run the traced graphs eagerly (no C++ compiler needed)
COMPILED = {"compile": True, "compile_backend": "aot_eager"}


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _records(run):
    return [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]


@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_blocks_train_like_eager(tiny_config, tmp_path):
    from torch._dynamo.utils import counters

    model = {"n_layers": 4}
    train(tiny_config(model=model, train={"steps": 6}), tmp_path / "eager", progress=False)
    eager = _records(tmp_path / "eager")
    counters.clear()
    cfg = tiny_config(model=model, train={"steps": 6, **COMPILED})
    train(cfg, tmp_path / "compiled", progress=False)
    compiled = _records(tmp_path / "compiled")
    assert [r["step"] for r in compiled] == [r["step"] for r in eager]
    for a, b in zip(compiled, eager, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        # the health hooks (armed every logged step) are traced, not recompiled per block
        assert a["health/act_clip_frac"] == pytest.approx(b["health/act_clip_frac"], abs=1e-6)
    # four blocks share their compilations: training and evaluation, armed and not, is a handful
    assert counters["stats"]["unique_graphs"] <= 8, dict(counters["stats"])


def test_compile_blocks_keeps_parameter_names():
    from bittern.models import ModelConfig, build_model

    cfg = ModelConfig(preset="tiny", vocab_size=64, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=48)
    model = build_model(cfg.resolved())
    names = list(model.state_dict())
    assert compile_blocks(model, "aot_eager") == 2
    assert list(model.state_dict()) == names  # checkpoints and exports see the same keys
    with pytest.raises(TypeError, match="layers"):
        compile_blocks(torch.nn.Linear(2, 2), "aot_eager")


def test_unknown_compile_backend_is_one_line_error(tiny_config, tmp_path, capsys):
    from bittern.cli import main
    from tests.cli.test_cli import write_config
    from tests.conftest import tiny_config_dict

    train = {"compile": True, "compile_backend": "no-such-backend", "steps": 2}
    cfg = tiny_config_dict(tiny_config().data.path, train=train)
    path = write_config(tmp_path / "c.toml", cfg)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run"), "--quiet"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bittern: error: train.compile_backend='no-such-backend' is not a torch.compile backend"]
    assert not (tmp_path / "run").exists()  # refused before anything was written
