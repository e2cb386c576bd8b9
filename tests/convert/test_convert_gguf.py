"""bittern convert from GGUF: a tiny file written here, and the real SmolLM2-135M when available."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import bittern
from bittern.convert import convert_checkpoint
from bittern.errors import BitternError
from tests.convert.conftest import make_hf_model, token_batch, write_gguf

pytest.importorskip("gguf")
pytest.importorskip("accelerate")

SMOLLM2 = os.environ.get("BITTERN_SMOLLM2_GGUF", "")


def test_gguf_logits_equal_transformers(tmp_path, tokenizer):
    hf = make_hf_model("llama")
    gguf_path = write_gguf(hf, tokenizer, tmp_path / "tiny.gguf")
    model, tok = bittern.load(convert_checkpoint(gguf_path, tmp_path / "run", quant="none"))
    ids = token_batch()
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() < 1e-5
    assert tok.encode("the quick brown fox") == tokenizer.encode("the quick brown fox").ids


def test_gguf_tied_embeddings(tmp_path, tokenizer):
    hf = make_hf_model("llama", tie_word_embeddings=True)
    gguf_path = write_gguf(hf, tokenizer, tmp_path / "tied.gguf")
    model, _ = bittern.load(convert_checkpoint(gguf_path, tmp_path / "run", quant="none"))
    assert model.config.tie_embeddings and model.lm_head.weight is model.embed_tokens.weight
    ids = token_batch()
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() < 1e-5


def test_gguf_missing_tensor_refused(tmp_path, tokenizer):
    gguf_path = write_gguf(
        make_hf_model("llama"), tokenizer, tmp_path / "bad.gguf", drop=("blk.1.ffn_up.weight",)
    )
    with pytest.raises(BitternError, match="lacks tensors.*layers.1.mlp.up_proj"):
        convert_checkpoint(gguf_path, tmp_path / "run")
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".tmp-*"))


def test_gguf_not_found(tmp_path):
    with pytest.raises(BitternError, match="GGUF file not found"):
        convert_checkpoint(tmp_path / "none.gguf", tmp_path / "run")


@pytest.mark.skipif(not SMOLLM2, reason="set BITTERN_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf")
def test_smollm2_logits_equal_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    path = Path(SMOLLM2)
    model, tok = bittern.load(convert_checkpoint(path, tmp_path / "smol", quant="none"))
    hf = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    ids = torch.tensor(
        [tok.encode("The capital of France is Paris. The quick brown fox jumps over the dog.")]
    )
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() < 1e-3
    assert model.config.n_layers == 30 and model.config.tie_embeddings
