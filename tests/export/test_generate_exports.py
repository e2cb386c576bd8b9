"""`bittern generate` from every export: the reloaded model samples what the trained run samples."""

from __future__ import annotations

import pytest
import torch

import bittern
from bittern.cli import main
from bittern.errors import BitternError
from bittern.export import export_run, load_any
from bittern.generate import sample
from bittern.nn import bitlinear_layers
from bittern.quant import ternarize
from tests.export.conftest import BUILTIN

gguf = pytest.importorskip("gguf")

PROMPT = "ROMEO.\nThe of and"
EXPORTS = [  # (trained run, format, gguf type)
    ("llama", "packed", "TQ2_0"),
    ("llama-channel", "packed-base3", "TQ2_0"),
    ("llama", "hf", "TQ2_0"),
    ("bitnet", "hf", "TQ2_0"),
    ("gguf", "gguf", "TQ2_0"),
    ("gguf", "gguf", "TQ1_0"),
    (BUILTIN, "hf", "TQ2_0"),  # the built-in job's model (dim 128, ffn 352): BitNetForCausalLM, SiLU
    (BUILTIN, "gguf", "TQ2_0"),  # ... and F16 codes in GGUF
]


def export(trained_run, tmp_path, name: str, fmt: str, gguf_type: str = "TQ2_0"):
    out = tmp_path / ("model.gguf" if fmt == "gguf" else fmt)
    export_run(trained_run(name), out, fmt, gguf_type)
    return out


def cli_text(capsys, path, *args: str) -> str:
    capsys.readouterr()  # drop what training the fixture printed
    assert main(["generate", str(path), "--prompt", "ROMEO", "--device", "cpu", *args]) == 0
    return capsys.readouterr().out


def seeded(model, ids: list[int]) -> list[int]:
    gen = torch.Generator().manual_seed(0)
    return sample(model, ids, 40, temperature=1.0, top_k=None, generator=gen)


@pytest.mark.parametrize(("name", "fmt", "gguf_type"), EXPORTS)
def test_export_generates_what_the_run_generates(trained_run, tmp_path, capsys, name, fmt, gguf_type):
    out = export(trained_run, tmp_path, name, fmt, gguf_type)
    ref, ref_tokenizer = bittern.load(trained_run(name))
    model, tokenizer = load_any(out)
    ids = ref_tokenizer.encode(PROMPT)
    assert tokenizer.encode(PROMPT) == ids and tokenizer.eos_id == ref_tokenizer.eos_id
    assert model.config.vocab_size == ref.config.vocab_size
    assert (model.config.norm_eps, model.config.rope_theta) == (ref.config.norm_eps, ref.config.rope_theta)
    with torch.no_grad():
        x = torch.tensor([ids])
        # The frozen layers multiply codes and scales in another order than BitLinear (a few ulps
        # apart), and one such difference can move an int8 activation across a rounding boundary:
        # ~1e-3 on the logits. Wrong codes, scales or layout move them by far more; the codes and
        # scales themselves are held exact by test_codes_are_exact_and_scales_are_gamma.
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-2)
    greedy = sample(ref, ids, 40, temperature=0)
    assert sample(model, ids, 40, temperature=0) == greedy and len(greedy) == 40
    assert seeded(model, ids) == seeded(ref, ids)
    args = ("--temperature", "0", "--max-new-tokens", "30")
    assert cli_text(capsys, out, *args) == cli_text(capsys, trained_run(name), *args)


@pytest.mark.parametrize(("name", "fmt"), [("bitnet", "hf"), ("gguf", "gguf"), (BUILTIN, "gguf")])
def test_codes_are_exact_and_scales_are_gamma(trained_run, tmp_path, name, fmt):
    out = export(trained_run, tmp_path, name, fmt, "TQ1_0")
    ref, _ = bittern.load(trained_run(name))
    model, _ = load_any(out)
    for layer_name, layer in bitlinear_layers(ref):
        codes, gamma = ternarize(layer.weight)
        frozen = model.get_submodule(layer_name)
        assert torch.equal(frozen.codes, codes)
        if fmt == "gguf":  # stored as gamma
            assert torch.equal(frozen.scale, gamma)
        else:  # stored as 1 / gamma: back within float32 rounding
            torch.testing.assert_close(frozen.scale, gamma, rtol=2e-7, atol=0)


def test_run_and_checkpoint_folders_still_load(trained_run, capsys):
    run = trained_run("llama")
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    args = ("--temperature", "0", "--max-new-tokens", "20")
    assert cli_text(capsys, ckpt, *args) == cli_text(capsys, run, *args)


def test_bpe_tokenizer_survives_gguf_metadata(corpus_folder, tmp_path):
    from bittern.data.tokenizer import BPETokenizer
    from bittern.export.gguf_export import write_tokenizer
    from bittern.export.load import gguf_tokenizer

    texts = [p.read_text() for p in sorted(corpus_folder.iterdir())]
    bpe = BPETokenizer.train(texts, 400)
    writer = gguf.GGUFWriter(str(tmp_path / "tok.gguf"), "bitnet")
    write_tokenizer(writer, bpe, 448)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    back = gguf_tokenizer(gguf.GGUFReader(tmp_path / "tok.gguf"), tmp_path / "tok.gguf")
    sample_text = texts[0][:2000] + " héllo  wörld\n\t<|endoftext|>"
    assert back.encode(sample_text) == bpe.encode(sample_text)
    assert back.vocab_size == bpe.vocab_size and back.eos_id == bpe.eos_id
    ids = bpe.encode(sample_text)
    assert back.decode(ids) == bpe.decode(ids)


def write_gguf(path, arch: str) -> None:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def truncate(path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def bad_path(kind: str, trained_run, tmp_path):
    """(path, expected error fragment) for one kind of unusable PATH."""
    if kind == "missing":
        return tmp_path / "nope", "no such run"
    if kind == "empty folder":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty", "is not a run, checkpoint, packed export"
    if kind == "other folder":
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "config.json").write_text('{"hello": 1}')
        return tmp_path / "other", "is not a run, checkpoint, packed export"
    if kind == "text file":
        (tmp_path / "notes.txt").write_text("hello\n")
        return tmp_path / "notes.txt", "not a .gguf export"
    if kind == "garbage gguf":
        (tmp_path / "x.gguf").write_bytes(b"not a gguf file at all")
        return tmp_path / "x.gguf", "cannot read GGUF file"
    if kind == "other gguf arch":
        write_gguf(tmp_path / "llama.gguf", "llama")
        return tmp_path / "llama.gguf", "GGUF architecture 'llama'"
    if kind == "truncated gguf":
        out = export(trained_run, tmp_path, "gguf", "gguf")
        truncate(out, out.stat().st_size // 2)
        return out, str(out)
    if kind == "truncated packed":
        out = export(trained_run, tmp_path, "llama", "packed")
        truncate(out / "model.safetensors", 100)
        return out, "cannot load packed export"
    if kind == "corrupt hf config":
        out = export(trained_run, tmp_path, "llama", "hf")
        (out / "config.json").write_text("{")
        return out, "cannot read"
    if kind == "hf without weights":
        out = export(trained_run, tmp_path, "llama", "hf")
        (out / "model.safetensors").unlink()
        return out, "has no model.safetensors"
    if kind == "hf of another architecture":
        out = export(trained_run, tmp_path, "llama", "hf")
        (out / "config.json").write_text('{"model_type": "gpt2", "hidden_act": "gelu"}')
        return out, "config.json: model_type 'gpt2'"
    raise AssertionError(kind)


BAD = [
    "missing",
    "empty folder",
    "other folder",
    "text file",
    "garbage gguf",
    "other gguf arch",
    "truncated gguf",
    "truncated packed",
    "corrupt hf config",
    "hf without weights",
    "hf of another architecture",
]


@pytest.mark.parametrize("kind", BAD)
def test_unusable_paths_are_one_line_errors(trained_run, tmp_path, capsys, kind):
    path, fragment = bad_path(kind, trained_run, tmp_path)
    with pytest.raises(BitternError, match="."):
        load_any(path)
    assert main(["generate", str(path), "--max-new-tokens", "5", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bittern: error: ") and err.count("\n") == 1, err
    assert fragment in err
