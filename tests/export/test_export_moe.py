"""Exporting a mixture of experts: the packed format round-trips it; hf and gguf refuse it in one line."""

from __future__ import annotations

import pytest
import torch

import bittern
from bittern.errors import BitternError
from bittern.export import export_run, load_any
from bittern.models.moe import set_expert_path
from bittern.train import train

MOE = {"moe_experts": 4, "moe_top_k": 2, "moe_ffn_dim": 32, "moe_balance": "bias", "moe_shared_experts": 1}


@pytest.fixture(scope="module")
def moe_run(dataset, tmp_path_factory):
    from bittern.config import config_from_dict
    from tests.conftest import tiny_config_dict

    run = tmp_path_factory.mktemp("moe") / "run"
    cfg = config_from_dict(tiny_config_dict(dataset, model=MOE, train={"steps": 2, "eval_every": 0}))
    train(cfg, run, progress=False)
    return run


@pytest.mark.parametrize("fmt", ["packed", "packed-base3"])
def test_packed_export_computes_the_trained_moe(fmt, moe_run, tmp_path):
    export_run(moe_run, tmp_path / "out", fmt)
    trained, _ = bittern.load(moe_run)
    set_expert_path(trained, "loop")  # as the frozen experts run: the same float order
    packed, _ = load_any(tmp_path / "out")
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(packed(x), trained.eval()(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(packed.layers[0].mlp.expert_bias, trained.layers[0].mlp.expert_bias)


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_hf_and_gguf_refuse_a_moe_in_one_line(fmt, moe_run, tmp_path):
    with pytest.raises(BitternError, match="is a mixture of experts: export it as packed") as e:
        export_run(moe_run, tmp_path / "out", fmt)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
