"""The trainer against runs it should equal, and against the unigram baseline."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import bittern
from bittern.checkpoint import latest_checkpoint, list_checkpoints
from bittern.data.loader import TokenDataset
from bittern.errors import BitternError
from bittern.eval import evaluate, unigram_loss
from bittern.monitor import read_metrics
from bittern.train import Trainer, train


def losses(run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}


def test_loss_decreases_below_unigram_baseline(tiny_config, dataset, tmp_path):
    cfg = tiny_config(train={"steps": 150, "eval_every": 150, "eval_batches": 0}, optim={"lr": 1e-2})
    result = train(cfg, tmp_path / "run", progress=False)
    per_step = losses(tmp_path / "run")
    assert per_step[150] < per_step[1] - 1.0
    baseline = unigram_loss(TokenDataset(dataset))
    assert result.val_loss < baseline - 0.3


def test_metrics_records(tiny_config, tmp_path):
    train(tiny_config(), tmp_path / "run", progress=False)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 21))
    for r in records:
        assert {"step", "loss", "lr", "grad_norm"} <= r.keys()
    assert [r["step"] for r in records if "val_loss" in r] == [10, 20]


def test_gradient_accumulation_equals_full_batch(tiny_config, tmp_path):
    """micro-batches of 2 accumulated over 4 steps == one batch of 8 (fp32, same data)."""
    train(tiny_config(train={"steps": 6}), tmp_path / "full", progress=False)
    train(tiny_config(train={"steps": 6, "micro_batch_size": 2}), tmp_path / "accum", progress=False)
    full, accum = losses(tmp_path / "full"), losses(tmp_path / "accum")
    assert full.keys() == accum.keys()
    for step in full:
        assert accum[step] == pytest.approx(full[step], rel=1e-5, abs=1e-6)


def test_kernels_section_reaches_every_layer(tiny_config, tmp_path):
    from bittern.nn import bitlinear_layers

    trainer = Trainer(tiny_config(kernels={"int8_mm": "pointer", "recompute_codes": False}), tmp_path / "run")
    options = trainer.kernel_options
    assert options.int8_mm == "pointer" and not options.recompute_codes
    assert {layer.kernel_options for _, layer in bitlinear_layers(trainer.model)} == {options}
    trainer.close()


def test_resume_is_bit_identical(tiny_config, tmp_path):
    """20 steps straight == 10 steps, stop, resume, 10 more: identical per-step losses and weights."""
    train(tiny_config(), tmp_path / "straight", progress=False)
    Trainer(tiny_config(checkpoint={"every": 0}), tmp_path / "split", progress=False).run(until=10)
    resumed = Trainer(tiny_config(), tmp_path / "split", resume=True, progress=False)
    assert resumed.resumed_from.name == "step_00000010"
    resumed.run()
    assert losses(tmp_path / "split") == losses(tmp_path / "straight")
    a, _ = bittern.load(tmp_path / "straight")
    b, _ = bittern.load(tmp_path / "split")
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


def test_occupied_run_folder_is_refused_and_untouched(tiny_config, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(train={"steps": 2}), run, progress=False)
    before = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(BitternError, match="already holds a run"):
        Trainer(tiny_config(), run)
    assert (run / "metrics.jsonl").read_bytes() == before
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    for flags in ({}, {"overwrite": True}):
        with pytest.raises(BitternError, match="not empty"):
            Trainer(tiny_config(), stranger, **flags)
    assert (stranger / "notes.txt").read_text() == "keep me"


def test_resume_refuses_a_different_model(tiny_config, tmp_path):
    train(tiny_config(train={"steps": 2}), tmp_path / "run", progress=False)
    with pytest.raises(BitternError, match="model.dim"):
        Trainer(tiny_config(model={"dim": 64}), tmp_path / "run", resume=True)


def test_corrupt_checkpoint_is_named(tiny_config, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(train={"steps": 10}), run, progress=False)
    weights = latest_checkpoint(run) / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(BitternError, match="model.safetensors"):
        bittern.load(run)
    with pytest.raises(BitternError, match="corrupt"):
        Trainer(tiny_config(), run, resume=True)


def test_retention_keeps_last(tiny_config, tmp_path):
    train(tiny_config(checkpoint={"every": 2, "keep_last": 3}), tmp_path / "run", progress=False)
    names = [p.name for p in list_checkpoints(tmp_path / "run")]
    assert names == ["step_00000016", "step_00000018", "step_00000020"]


def test_load_returns_eval_model_matching_training_eval(tiny_config, dataset, tmp_path):
    cfg = tiny_config(train={"eval_batches": 0})
    result = train(cfg, tmp_path / "run", progress=False)
    model, tokenizer = bittern.load(tmp_path / "run")
    assert not model.training
    assert tokenizer.decode(tokenizer.encode("ROMEO.")) == "ROMEO."
    data = TokenDataset(dataset)
    again = evaluate(model, data, cfg.train.seq_len, cfg.train.batch_size)
    assert again["loss"] == pytest.approx(result.val_loss, rel=1e-6)
    x, _ = next(data.val_batches(16, 2))
    assert model(x).shape == (2, 16, model.config.padded_vocab_size)


def test_full_precision_twin_has_no_bitlinear(tiny_config, tmp_path):
    from bittern.nn import BitLinear

    train(tiny_config(model={"quant": "none"}, train={"steps": 2}), tmp_path / "run", progress=False)
    model, _ = bittern.load(tmp_path / "run")
    assert not any(isinstance(m, BitLinear) for m in model.modules())
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert 'quant = "none"' in saved and "dim = 32" in saved
    assert json.loads((latest_checkpoint(tmp_path / "run") / "manifest.json").read_text())["step"] == 2


def files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def corrupt_copy(dataset, folder):
    """A copy of `dataset` with one byte of its train shard flipped (same size)."""
    copy = shutil.copytree(dataset, folder)
    shard = copy / "train_000.bin"
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    shard.write_bytes(bytes(blob))
    return copy


@pytest.mark.parametrize("failing", ["seq_len", "micro_batch", "bad_shard", "no_teacher"])
def test_overwrite_runs_every_check_before_deleting(tiny_config, dataset, tmp_path, failing):
    run = tmp_path / "run"
    train(tiny_config(train={"steps": 2}), run, progress=False)
    before = files(run)
    assert any(name.startswith("checkpoints/") for name in before)
    bad = {
        "seq_len": ({"train": {"seq_len": 128}}, "exceeds model.max_seq_len"),
        "micro_batch": ({"train": {"micro_batch_size": 3}}, "does not divide"),
        "bad_shard": ({"data": {"path": str(corrupt_copy(dataset, tmp_path / "bad"))}}, "corrupt"),
        "no_teacher": ({"loss": {"distill": 1.0}}, "need a teacher"),
    }
    sections, message = bad[failing]
    with pytest.raises(BitternError, match=message):
        Trainer(tiny_config(**sections), run, overwrite=True)
    assert files(run) == before


def test_a_failed_check_creates_no_run_folder(tiny_config, dataset, tmp_path):
    bad_data = {"path": str(corrupt_copy(dataset, tmp_path / "bad"))}
    for sections in ({"data": bad_data}, {"train": {"seq_len": 128}}):
        with pytest.raises(BitternError):
            Trainer(tiny_config(**sections), tmp_path / "new" / "run")
        assert not (tmp_path / "new").exists()


def test_validation_scores_the_same_tokens_whatever_the_micro_batch(tiny_config, tmp_path):
    vals = [
        Trainer(tiny_config(train={"micro_batch_size": m}), tmp_path / f"m{m}", progress=False).validate()
        for m in (1, 2, 8)
    ]
    for val in vals:  # train.eval_batches (4) x train.batch_size (8) windows of 32 tokens
        assert (val["windows"], val["tokens"]) == (4 * 8, 4 * 8 * 32)
        assert val["loss"] == pytest.approx(vals[0]["loss"], rel=1e-6)
