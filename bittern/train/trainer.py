"""The training loop: gradient accumulation, AdamW + schedule, clipping, eval, checkpoints.

Every batch is a pure function of (seed, step, rank), and the schedule of the step, so a
run restored from a checkpoint continues exactly where it stopped.
"""

from __future__ import annotations

import math
import random
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bittern.checkpoint import (
    latest_checkpoint,
    load_train_state,
    load_weights,
    prepare_run_dir,
    prune_checkpoints,
    save_checkpoint,
    verify_checkpoint,
)
from bittern.config import Config, config_from_dict, to_toml
from bittern.errors import BitternError
from bittern.eval import evaluate
from bittern.models import build_model
from bittern.monitor import MetricsLogger, truncate_metrics
from bittern.runtime import autocast, resolve_device, resolve_precision
from bittern.train.data import open_dataset
from bittern.train.optim import build_optimizer
from bittern.train.schedule import lr_multiplier


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    val_loss: float | None
    val_perplexity: float | None
    val_bits_per_byte: float | None


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state()[1].tolist()}
    state["torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), 624, 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _check_compatible(saved: Config, cfg: Config) -> None:
    """A resumed run must keep its model and data; the rest may change (e.g. more steps)."""
    for section in ("model", "data"):
        old, new = getattr(saved, section).__dict__, getattr(cfg, section).__dict__
        for key in old:
            if old[key] != new[key]:
                raise BitternError(
                    f"cannot resume: {section}.{key} differs from the run's ({old[key]!r} -> {new[key]!r})"
                )


class Trainer:
    """One training run in a run folder."""

    def __init__(
        self, cfg: Config, out: Path, resume: bool = False, overwrite: bool = False, progress: bool = True
    ) -> None:
        self.out = Path(out)
        self.progress = progress
        resuming = prepare_run_dir(self.out, resume, overwrite)
        saved_cfg = self.out / "config.toml"
        self.cfg = cfg
        t = cfg.train
        self.device = resolve_device(t.device)
        self.precision = resolve_precision(t.precision, self.device)
        self.rank, self.world = 0, 1
        self.data = open_dataset(cfg.data, progress=progress)
        self._plan_batches()
        tokenizer_dir = self.out / "tokenizer"
        if resuming and tokenizer_dir.exists():
            from bittern.data.tokenizer import load_tokenizer

            self.data.check_tokenizer(load_tokenizer(tokenizer_dir).identity())
        cfg.model = cfg.model.resolved(vocab_size=self.data.vocab_size)
        if cfg.model.vocab_size < self.data.vocab_size:
            raise BitternError(
                f"model.vocab_size {cfg.model.vocab_size} is smaller than the "
                f"tokenizer's {self.data.vocab_size}"
            )
        if resuming and saved_cfg.exists():
            _check_compatible(config_from_dict(tomllib.loads(saved_cfg.read_text())), cfg)
        if t.seq_len > cfg.model.max_seq_len:
            raise BitternError(f"train.seq_len {t.seq_len} exceeds model.max_seq_len {cfg.model.max_seq_len}")
        _seed_everything(t.seed)
        self.model = build_model(cfg.model).to(self.device)
        self.forward = torch.compile(self.model) if t.compile else self.model
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.autocast = autocast(self.device, self.precision)
        self.step = 0
        self.tokens_seen = 0
        self.resumed_from = self._restore() if resuming else None
        self.config_toml = to_toml(cfg)
        saved_cfg.write_text(self.config_toml)
        if not tokenizer_dir.exists():
            self.data.tokenizer().save(tokenizer_dir)
        self.logger = MetricsLogger(self.out, tensorboard=cfg.log.tensorboard)

    def _plan_batches(self) -> None:
        t = self.cfg.train
        if t.batch_size % self.world:
            raise BitternError(f"train.batch_size {t.batch_size} is not divisible by {self.world} ranks")
        per_rank = t.batch_size // self.world
        micro = t.micro_batch_size or per_rank
        if per_rank % micro:
            raise BitternError(
                f"train.micro_batch_size {micro} does not divide the {per_rank} sequences per rank"
            )
        self.per_rank, self.micro, self.accum = per_rank, micro, per_rank // micro

    def _restore(self) -> Path | None:
        """Load the newest committed checkpoint, if any; verify it first."""
        ckpt = latest_checkpoint(self.out)
        if ckpt is None:
            return None
        verify_checkpoint(ckpt)
        load_weights(ckpt, self.model)
        state = load_train_state(ckpt)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        _set_rng_state(state["rng"])
        truncate_metrics(self.out / "metrics.jsonl", self.step)
        return ckpt

    def _set_lr(self) -> float:
        lr = self.cfg.optim.lr * lr_multiplier(self.step, self.cfg.train.steps, self.cfg.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self) -> tuple[float, float]:
        """One optimizer step over `accum` micro-batches; returns (mean loss, pre-clip grad norm)."""
        t = self.cfg.train
        total = torch.zeros((), device=self.device)
        for m in range(self.accum):
            start = self.rank * self.per_rank + m * self.micro
            x, y = self.data.train_batch(t.seed, self.step, t.batch_size, t.seq_len, start, self.micro)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self.autocast:
                logits = self.forward(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            (loss / self.accum).backward()
            total += loss.detach()
        max_norm = self.cfg.clip.max_norm if self.cfg.clip.mode == "norm" else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += t.batch_size * t.seq_len
        return (total / self.accum).item(), norm.item()

    def validate(self) -> dict[str, float]:
        t = self.cfg.train
        return evaluate(
            self.forward, self.data, t.seq_len, self.micro, t.eval_batches or None, self.device, self.autocast
        )

    def save(self) -> Path:
        state = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "optimizer": self.optimizer.state_dict(),
            "rng": _rng_state(),
        }
        path = save_checkpoint(self.out, self.step, self.model, state, self.config_toml)
        prune_checkpoints(self.out, self.cfg.checkpoint.keep_last)
        return path

    def run(self, until: int | None = None) -> TrainResult:
        """Train to train.steps, or stop (with a checkpoint) once step `until` is done."""
        t, c = self.cfg.train, self.cfg
        last = min(t.steps, until or t.steps)
        bar = tqdm(total=t.steps, initial=self.step, disable=not self.progress, desc="train", unit="step")
        window_tokens, window_start, val = 0, time.perf_counter(), None
        self.model.train()
        try:
            while self.step < last:
                lr = self._set_lr()
                loss, grad_norm = self.train_step()
                window_tokens += t.batch_size * t.seq_len
                record = {}
                if self.step % c.log.every == 0 or self.step == t.steps:
                    elapsed = time.perf_counter() - window_start
                    tok_s = window_tokens / max(elapsed, 1e-9)
                    record = {
                        "loss": loss,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "tokens_per_sec": tok_s,
                        "tokens_seen": self.tokens_seen,
                    }
                    window_tokens, window_start = 0, time.perf_counter()
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}")
                if (t.eval_every and self.step % t.eval_every == 0) or self.step == t.steps:
                    val = self.validate()
                    record |= {
                        "loss": loss,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "val_loss": val["loss"],
                        "val_perplexity": val["perplexity"],
                        "val_bits_per_byte": val["bits_per_byte"],
                    }
                    bar.write(
                        f"step {self.step}: val loss {val['loss']:.4f}, perplexity {val['perplexity']:.2f}"
                    )
                if record:
                    self.logger.log(self.step, record)
                if (c.checkpoint.every and self.step % c.checkpoint.every == 0) or self.step == last:
                    self.save()
                bar.update(1)
                if not math.isfinite(loss):
                    raise BitternError(f"loss is {loss} at step {self.step}; stopping")
        finally:
            bar.close()
            self.logger.close()
        if val is None:
            val = self.validate()
        return TrainResult(self.out, self.step, val["loss"], val["perplexity"], val["bits_per_byte"])


def train(
    cfg: Config, out: Path, resume: bool = False, overwrite: bool = False, progress: bool = True
) -> TrainResult:
    """Train `cfg` into run folder `out` and return the final validation figures."""
    return Trainer(cfg, out, resume=resume, overwrite=overwrite, progress=progress).run()
