"""Packed export: runs in bittern with the trained model's logits, at about 2 or 1.6 bits per weight."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import bittern
from bittern.errors import BitternError
from bittern.export.pack import unpack_2bit, unpack_base3
from bittern.export.packed import export_packed, load_packed
from bittern.quant import ternarize


def tokens(n: int = 48) -> torch.Tensor:
    return torch.randint(0, 256, (2, n), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["llama", "bitnet", "llama-channel"])
@pytest.mark.parametrize("base3", [False, True])
def test_packed_model_matches_trained_logits(trained_run, tmp_path, name, base3):
    run = trained_run(name)
    result = export_packed(run, tmp_path / "packed", base3=base3)
    model, _ = bittern.load(run)
    packed, tokenizer = load_packed(tmp_path / "packed")
    assert tokenizer.encode("hi") == [104, 105]
    with torch.no_grad():
        torch.testing.assert_close(packed(tokens()), model(tokens()), rtol=1e-4, atol=1e-4)
    assert result.bytes > 0 and result.bits_per_param > 0


@pytest.mark.parametrize("base3", [False, True])
def test_stored_codes_are_the_ternary_codes(trained_run, tmp_path, base3):
    run = trained_run("llama")
    export_packed(run, tmp_path / "p", base3=base3)
    model, _ = bittern.load(run)
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    unpack = unpack_base3 if base3 else unpack_2bit
    weight = model.get_submodule("layers.1.mlp.down_proj").weight
    codes, gamma = ternarize(weight)
    with safe_open(tmp_path / "p" / "model.safetensors", "pt") as f:
        stored = f.get_tensor("layers.1.mlp.down_proj.codes")
        shape = config["code_shapes"]["layers.1.mlp.down_proj"]
        assert torch.equal(unpack(stored, shape), codes)
        assert torch.equal(f.get_tensor("layers.1.mlp.down_proj.scale"), gamma)
        assert stored.numel() == -(-weight.numel() // (5 if base3 else 4))
        assert "layers.1.mlp.down_proj.weight" not in f.keys()


def test_existing_output_is_refused_and_left_alone(trained_run, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    with pytest.raises(BitternError, match="already exists"):
        export_packed(trained_run("llama"), out)
    assert list(out.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["exists"]


def test_missing_run_is_a_user_error(tmp_path):
    with pytest.raises(BitternError):
        export_packed(tmp_path / "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()
