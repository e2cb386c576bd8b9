"""bittern convert: Hugging Face folders (Llama, Mistral, Qwen2) -> run folders with identical logits."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import bittern
from bittern.convert import convert_checkpoint
from bittern.errors import BitternError
from bittern.nn import BitLinear
from tests.convert.conftest import make_hf_model, save_hf, token_batch


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize(
    "kind,overrides",
    [
        ("llama", {}),
        ("llama", {"tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True}),
        ("mistral", {}),
        ("qwen2", {}),  # q/k/v biases only: bittern's other biases are zeros
    ],
)
def test_quant_none_logits_equal_transformers(tmp_path, tokenizer, kind, overrides):
    hf = make_hf_model(kind, **overrides)
    run = convert_checkpoint(save_hf(hf, tmp_path / "hf", tokenizer), tmp_path / "run", quant="none")
    model, tok = bittern.load(run)
    ids = token_batch()
    with torch.no_grad():
        diff = (model(ids) - _hf_logits(hf, ids)).abs().max().item()
    assert diff < 1e-5
    assert model.config.vocab_multiple == 1 and model.config.vocab_size == hf.config.vocab_size
    assert tok.encode("the lazy dog") == tokenizer.encode("the lazy dog").ids


def test_run_folder_layout(llama_run):
    assert (llama_run / "config.toml").is_file() and (llama_run / "tokenizer").is_dir()
    assert (llama_run / "checkpoints" / "step_00000000" / "COMMITTED").is_file()
    assert "vocab_multiple = 1" in (llama_run / "config.toml").read_text()
    assert not list(llama_run.parent.glob(".tmp-*"))


def test_ternary_keeps_latent_weights(tmp_path, llama_dir):
    hf = make_hf_model("llama")  # llama_dir holds this very model (same seed)
    run = convert_checkpoint(llama_dir, tmp_path / "run", quant="ternary")
    model, _ = bittern.load(run)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, BitLinear)}
    assert len(layers) == 7 * hf.config.num_hidden_layers
    hf_state = hf.state_dict()
    for name, layer in layers.items():
        assert layer.quantized
        torch.testing.assert_close(layer.weight, hf_state[f"model.{name}.weight"], rtol=0, atol=0)
        torch.testing.assert_close(layer.norm.weight, torch.ones_like(layer.norm.weight))
    torch.testing.assert_close(model.lm_head.weight, hf.lm_head.weight, rtol=0, atol=0)


def _no_output(tmp_path):
    return not (tmp_path / "run").exists() and not list(tmp_path.glob(".tmp-*"))


def test_unsupported_architecture(tmp_path, tokenizer):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=300, n_positions=64)
    save_hf(transformers.GPT2LMHeadModel(cfg), tmp_path / "gpt2", tokenizer)
    with pytest.raises(BitternError, match="unsupported architecture 'gpt2'"):
        convert_checkpoint(tmp_path / "gpt2", tmp_path / "run")
    assert _no_output(tmp_path)


def test_rope_scaling_refused(tmp_path, tokenizer):
    scaled = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    save_hf(make_hf_model("llama", rope_parameters=scaled), tmp_path / "hf", tokenizer)
    with pytest.raises(BitternError, match="RoPE scaling type 'linear'"):
        convert_checkpoint(tmp_path / "hf", tmp_path / "run")
    assert _no_output(tmp_path)


def test_missing_tensor_refused(tmp_path, tokenizer):
    folder = save_hf(make_hf_model("llama"), tmp_path / "hf", tokenizer)
    state = load_file(folder / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(BitternError, match="lacks tensors.*layers.1.mlp.up_proj"):
        convert_checkpoint(folder, tmp_path / "run")
    assert _no_output(tmp_path)


def test_bad_sources(tmp_path, llama_dir):
    with pytest.raises(BitternError, match="not a Hugging Face folder"):
        convert_checkpoint(tmp_path / "nothing", tmp_path / "run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BitternError, match="no config.json"):
        convert_checkpoint(tmp_path / "empty", tmp_path / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(BitternError, match="not empty"):
        convert_checkpoint(llama_dir, tmp_path / "run")
    with pytest.raises(BitternError, match="holds no bittern run"):
        convert_checkpoint(llama_dir, tmp_path / "run", overwrite=True)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_sliding_window_caps_max_seq_len(tmp_path, tokenizer):
    hf = make_hf_model("mistral", sliding_window=16)
    run = convert_checkpoint(save_hf(hf, tmp_path / "hf", tokenizer), tmp_path / "run", quant="none")
    model, _ = bittern.load(run)
    assert model.config.max_seq_len == 16  # exact up to the window; longer inputs are refused
    ids = token_batch(length=16)
    with torch.no_grad():
        assert (model(ids) - _hf_logits(hf, ids)).abs().max().item() < 1e-5


def test_config_json_unreadable(tmp_path, llama_dir):
    folder = tmp_path / "hf"
    folder.mkdir()
    for f in llama_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"})[:-3])
    with pytest.raises(BitternError, match="cannot read the model config"):
        convert_checkpoint(folder, tmp_path / "run")
