"""The frozen teacher: from a run, a HF folder or a GGUF; tokenizer and memory checks."""

from __future__ import annotations

import pytest
import torch

from bittern.data.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer
from bittern.errors import BitternError
from bittern.train.teacher import check_fits, load_teacher
from tests.convert.conftest import make_hf_model, tiny_tokenizer, token_batch, write_gguf


@pytest.mark.parametrize("use_run", [True, False])
def test_teacher_frozen_and_exact(use_run, llama_run, llama_dir):
    student_tok = load_tokenizer(llama_run / "tokenizer")
    teacher = load_teacher(llama_run if use_run else llama_dir, "cpu", student_tokenizer=student_tok)
    assert not teacher.model.training
    assert all(not p.requires_grad for p in teacher.model.parameters())
    assert teacher.model.embed_tokens.weight.dtype == torch.float32  # fp32 on CPU
    ids = token_batch()
    out = teacher(ids, hidden=True)
    assert not out.logits.requires_grad and len(out.hiddens) == 2
    with torch.no_grad():
        expected = make_hf_model("llama")(ids).logits
    assert (out.logits - expected).abs().max().item() < 1e-5
    assert teacher(ids).hiddens is None


def test_teacher_from_gguf_matches_converted_tokenizer(tmp_path, tokenizer, llama_run):
    pytest.importorskip("gguf")
    path = write_gguf(make_hf_model("llama"), tokenizer, tmp_path / "t.gguf")
    teacher = load_teacher(path, "cpu", student_tokenizer=load_tokenizer(llama_run / "tokenizer"))
    ids = token_batch()
    with torch.no_grad():
        expected = make_hf_model("llama")(ids).logits
    assert (teacher(ids).logits - expected).abs().max().item() < 1e-5


def test_teacher_bf16(llama_dir):
    teacher = load_teacher(llama_dir, "cpu", dtype=torch.bfloat16)
    assert teacher(token_batch()).logits.dtype == torch.bfloat16


def test_tokenizer_mismatch(llama_run):
    with pytest.raises(BitternError, match="tokenizer mismatch"):
        load_teacher(llama_run, "cpu", student_tokenizer=ByteTokenizer())
    other = tiny_tokenizer(text="a completely different corpus of words, trained to the same size " * 30)
    assert other.get_vocab_size() == 300
    with pytest.raises(BitternError, match="tokenizer mismatch.*300 tokens.*300 tokens"):
        load_teacher(llama_run, "cpu", student_tokenizer=HFTokenizer(other, "<|endoftext|>"))


def test_teacher_that_does_not_fit():
    with pytest.raises(BitternError, match=r"teacher big does not fit: its weights need 2.00 GiB, 1.00 GiB"):
        check_fits(2 << 30, torch.device("cpu"), "big", free=1 << 30)
    check_fits(1 << 20, torch.device("cpu"), "small", free=1 << 30)
