"""HF export: transformers loads it in a fresh process without bittern and matches bittern's logits.

Tolerance: logits within 5e-3 absolute (float32; the two forwards differ only in float rounding,
which can move an activation across a rounding boundary now and then: in the same process they
agree to 2e-6, in the fresh one with its own thread count one logit of the dim-256 run was 2.1e-3
off), perplexity within 0.5%.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import bittern
from bittern.errors import BitternError
from bittern.export.hf import check_exportable, export_hf, hf_config
from bittern.export.load import hf_model_config
from bittern.models import ModelConfig, build_model
from bittern.nn import bitlinear_layers
from bittern.quant import ternarize
from tests.export.conftest import BUILTIN

FRESH_PROCESS = textwrap.dedent(
    """
    import sys
    sys.modules["bittern"] = None  # any bittern import fails
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, text = sys.argv[1], sys.argv[2]
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits
    torch.save({"ids": ids, "logits": logits, "class": type(model).__name__}, sys.argv[3])
    """
)

TEXT = "ROMEO.\nThe of and to my thou have so.\n\nJULIET.\nIn you is"


def run_fresh(folder, tmp_path) -> dict:
    script = tmp_path / "load.py"
    script.write_text(FRESH_PROCESS)
    out = tmp_path / "out.pt"
    env = {"TORCHDYNAMO_DISABLE": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(folder), TEXT, str(out)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("llama", "LlamaForCausalLM"),
        ("bitnet", "BitNetForCausalLM"),
        ("gguf", "BitNetForCausalLM"),  # arch llama with sub-layer norms: BitNet's class, SiLU
        (BUILTIN, "BitNetForCausalLM"),
    ],
)
def test_transformers_matches_bittern_without_bittern(trained_run, tmp_path, name, cls):
    run = trained_run(name)
    export_hf(run, tmp_path / "hf")
    got = run_fresh(tmp_path / "hf", tmp_path)
    model, tokenizer = bittern.load(run)
    ids = torch.tensor([tokenizer.encode(TEXT)])
    assert got["class"] == cls
    assert torch.equal(got["ids"], ids)
    with torch.no_grad():
        ours = model(ids)
    torch.testing.assert_close(got["logits"], ours, rtol=0, atol=5e-3)
    loss_ours = F.cross_entropy(ours[0, :-1], ids[0, 1:])
    loss_hf = F.cross_entropy(got["logits"][0, :-1], ids[0, 1:])
    assert abs(torch.exp(loss_hf) / torch.exp(loss_ours) - 1) < 0.005


def test_weight_scale_is_inverse_gamma(trained_run, tmp_path):
    run = trained_run("llama")
    export_hf(run, tmp_path / "hf")
    model, _ = bittern.load(run)
    layer = model.get_submodule("layers.0.self_attn.q_proj")
    codes, gamma = ternarize(layer.weight)
    with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as f:
        scale = f.get_tensor("model.layers.0.self_attn.q_proj.weight_scale")
        packed = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
        norm = f.get_tensor("model.layers.0.self_attn.q_proj.rms_norm.weight")
    torch.testing.assert_close(scale, (1 / gamma).reshape(1))
    torch.testing.assert_close(norm, layer.norm.weight.detach())
    rows = packed.shape[0]  # transformers' layout: row r of block i sits at bits 2i of packed row r
    unpacked = torch.cat([((packed >> (2 * i)) & 3).to(torch.int8) - 1 for i in range(4)])
    assert packed.dtype == torch.uint8 and rows * 4 == codes.shape[0]
    assert torch.equal(unpacked, codes)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["quantization_config"]["use_rms_norm"] is True


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        ({"weight_granularity": "channel"}, "weight_granularity"),
        ({"arch": "bitnet", "bias": True}, "bias"),
        ({"dim": 30, "n_heads": 2, "n_kv_heads": 1}, "multiple of 4"),
    ],
)
def test_unrepresentable_models_are_refused(overrides, option):
    cfg = ModelConfig(vocab_size=100, **overrides).resolved()
    with pytest.raises(BitternError, match=option):
        check_exportable(cfg)


def test_one_error_lists_every_unmet_requirement():
    cfg = ModelConfig(
        vocab_size=100,
        arch="bitnet",
        bias=True,
        weight_granularity="channel",
        dim=30,
        n_heads=2,
        n_kv_heads=1,
    )
    with pytest.raises(BitternError) as e:
        check_exportable(cfg.resolved())
    message = str(e.value)
    assert "\n" not in message
    for part in ["weight_granularity", "--model.weight_granularity=tensor", "--model.bias=false", "dim"]:
        assert part in message


@pytest.mark.parametrize(
    ("arch", "placement", "cls", "act"),
    [
        ("llama", "inside", "LlamaConfig", "silu"),
        ("llama", "sublayer", "BitNetConfig", "silu"),
        ("bitnet", "sublayer", "BitNetConfig", "relu2"),
        ("bitnet", "inside", "LlamaConfig", "relu2"),
        ("bitnet", "none", "LlamaConfig", "relu2"),
    ],
)
def test_class_follows_the_norms_and_activation_the_arch(arch, placement, cls, act):
    cfg = ModelConfig(vocab_size=128, arch=arch, norm_placement=placement).resolved()
    check_exportable(cfg)
    config = hf_config(cfg, None, [name for name, _ in bitlinear_layers(build_model(cfg))])
    assert type(config).__name__ == cls and config.hidden_act == act
    assert hf_model_config(config.to_dict()) == replace(cfg, vocab_multiple=1)  # what bittern reads back


def test_refusal_writes_nothing(trained_run, tmp_path):
    with pytest.raises(BitternError, match="weight_granularity"):
        export_hf(trained_run("llama-channel"), tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []
