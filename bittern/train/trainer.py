"""The training loop: accumulation, the recipe, the stability guard, monitoring, checkpoints.

Every batch is a pure function of (seed, batch index, rank) and every schedule a pure
function of the step, so a run restored from a checkpoint continues exactly where it
stopped. The batch index is the step plus `data_offset`, which a rollback advances to skip
the batches that caused it.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bittern.checkpoint import (
    check_run_dir,
    list_checkpoints,
    prepare_run_dir,
    prune_checkpoints,
    remove_stale_saves,
    verify_checkpoint,
)
from bittern.checkpoint.sharded import load_training, save_training
from bittern.config import Config, config_from_dict, to_toml
from bittern.distributed import (
    any_across_ranks,
    barrier,
    init_distributed,
    local_device,
    parallelize,
    set_gradient_sync,
    shutdown,
    sum_across_ranks,
)
from bittern.distributed.expert_parallel import check_expert_parallel, expert_parameters
from bittern.distributed.packed import check_packed_all_gather, pack_shards
from bittern.errors import BitternError, TrainingStopped
from bittern.eval import figures, rank_share, scope, score_windows, val_windows
from bittern.models import build_model
from bittern.monitor import (
    Alerts,
    MetricsLogger,
    TernaryHealth,
    log_weight_histograms,
    memory_stats,
    mfu,
    peak_flops,
    report,
    reset_peak,
    truncate_metrics,
)
from bittern.monitor.moe import MoEMonitor
from bittern.nn import KernelOptions, configure_fast_path
from bittern.runtime import autocast, resolve_device, resolve_precision
from bittern.train.clip import GradClipper
from bittern.train.compiling import check_backend, compile_blocks, compiled_cross_entropy, cross_entropy
from bittern.train.data import open_dataset, resolved_tokenizer
from bittern.train.guard import OK, ROLLBACK, PlateauWatch, StabilityGuard
from bittern.train.init import LayerLambdas, init_model_config, load_init, validate_init
from bittern.train.losses import LossComputer
from bittern.train.optim import apply_lr_and_wd, build_optimizer
from bittern.train.progressive import quant_lambda
from bittern.train.rng import rng_state, seed_everything, set_rng_state
from bittern.train.scaling import DynamicLossScaler, alpha_scale
from bittern.train.schedule import lr_multiplier, warmup_steps, weight_decay_at
from bittern.train.signals import EXIT_GAVE_UP, EXIT_PREEMPTED, StopRequest
from bittern.train.step import StepOutcome, TrainStep
from bittern.train.teacher import load_teacher


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    val_loss: float | None
    val_perplexity: float | None
    val_bits_per_byte: float | None
    is_main: bool = True
    val_scope: str = ""  # what the validation scored (bittern.eval.scope)
    already_complete: bool = False  # resumed at or past train.steps: nothing was trained


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
        self,
        cfg: Config,
        out: Path,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        init: str | None = None,
    ) -> None:
        self.out, self.cfg, self.init_source = Path(out), cfg, init
        t = cfg.train
        if t.compile:
            check_backend(t.compile_backend)  # a bad train.compile_backend fails before anything is written
        check_packed_all_gather(cfg)  # on any number of ranks, like the rest of the config
        check_expert_parallel(cfg)
        base_device = resolve_device(t.device)
        self.dist = init_distributed(base_device, cfg.dist.timeout)
        self.device = local_device(base_device, self.dist)
        self.rank, self.world, self.is_main = self.dist.rank, self.dist.world, self.dist.is_main
        self.progress = progress and self.is_main
        resuming = check_run_dir(self.out, resume, overwrite)  # read-only: created once all checks pass
        self.precision = resolve_precision(t.precision, self.device)
        self.data = self._open_data()
        self._plan_batches()
        if init:
            cfg.model = init_model_config(cfg.model, init)
        self._resolve_model(resuming)
        validate_init(cfg.init, cfg.model.n_layers, bool(init))
        seed_everything(t.seed)
        self.model = build_model(cfg.model)
        if init and not resuming:
            load_init(self.model, init)
        self.model.to(self.device)
        self.layer_lambdas = LayerLambdas(cfg.init, cfg.model.n_layers, cfg.progressive.activations)
        self.fsdp = self.dist.enabled and cfg.dist.mode == "fsdp"
        self.packed = self.fsdp and cfg.dist.packed_all_gather  # ignored on one process, like dist.mode
        k = cfg.kernels  # FSDP2 refills the unsharded weights every step: no codes kept between steps
        self.kernel_options = KernelOptions(
            k.enabled,
            k.grad_input_int8,
            k.grad_weight_int8,
            not self.fsdp,
            recompute_codes=k.recompute_codes,
            int8_mm=k.int8_mm,
        )
        configure_fast_path(self.model, self.kernel_options)
        param_dtype = torch.bfloat16 if self.precision == "bf16" else None
        if t.compile:  # block by block, before DDP/FSDP2 wrap them (bittern.train.compiling)
            compile_blocks(self.model, t.compile_backend)
        self.cross_entropy = compiled_cross_entropy(t.compile_backend) if t.compile else cross_entropy
        self.wrapped = self.model
        if self.dist.enabled:
            d = cfg.dist
            self.wrapped = parallelize(
                self.model,
                d.mode,
                self.device,
                d.bucket_cap_mb,
                param_dtype,
                self.packed,
                d.reshard_after_forward,
                d.expert_parallel,
            )
        self.expert_params = expert_parameters(self.model)  # expert parallelism: this rank's own
        self.forward = self.wrapped
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.loss_fn, self.teacher = self._build_losses()
        self.autocast = autocast(self.device, self.precision)
        self.scaler = DynamicLossScaler(cfg.loss_scale) if self.precision == "fp16" else None
        self.clipper = GradClipper(cfg.clip)
        self.guard = StabilityGuard(cfg.guard)
        self.step_fn = TrainStep(
            self.model,
            self.optimizer,
            self._loss,
            self.clipper,
            accum=self.accum,
            gradient_sync=self._gradient_sync,
            scaler=self.scaler,
            guard=self.guard,
            dist=self.dist,
            extra_params=list(self.loss_fn.parameters()) if self.loss_fn is not None else (),
            expert_params=self.expert_params,
            after_update=[lambda: pack_shards(self.model)] if self.packed else (),  # for the next all-gathers
        )
        self.plateau = PlateauWatch(cfg.guard.plateau_patience)
        self.alerts = Alerts(
            grad_norm_threshold=cfg.guard.alert_grad_norm,
            grad_norm_spike=cfg.guard.alert_grad_spike,
            quiet_until=warmup_steps(cfg.schedule, t.steps),
        )
        self.health = TernaryHealth().attach(self.model)
        self.moe = MoEMonitor(self.model, cfg.log.moe_dead_after)
        self.peak_flops = peak_flops(self.device, cfg.log.peak_tflops)
        self.step = self.tokens_seen = self.data_offset = 0
        self.progressive_start, self.progressive_mode = 0, cfg.progressive.schedule
        self.prev_grad_norm, self.quant_lambda = 0.0, None
        self._prepare_folder(resume, overwrite)
        self.resumed_from = self._restore_newest() if resuming else None
        self.config_toml = to_toml(cfg)
        if self.is_main:
            (self.out / "config.toml").write_text(self.config_toml)
            if not (self.out / "tokenizer").exists():
                self.data.tokenizer().save(self.out / "tokenizer")
        self.logger = MetricsLogger(self.out, tensorboard=cfg.log.tensorboard, enabled=self.is_main)

    def _prepare_folder(self, resume: bool, overwrite: bool) -> None:
        """Rank 0 prepares the run folder (an old one goes only now); the others wait for it."""
        if self.is_main:
            prepare_run_dir(self.out, resume, overwrite)
        barrier(self.dist)

    def _open_data(self):
        """Rank 0 prepares a built-in corpus first, so the others only read it."""
        data = open_dataset(self.cfg.data, progress=self.progress) if self.is_main else None
        barrier(self.dist)
        return data or open_dataset(self.cfg.data, progress=False)

    # ---- setup -------------------------------------------------------------------------
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

    def _resolve_model(self, resuming: bool) -> None:
        """Fill the model config (preset, tokenizer) and data.tokenizer; check them against a resumed run."""
        cfg = self.cfg
        cfg.data.tokenizer = resolved_tokenizer(cfg.data, self.data)
        if resuming and (self.out / "tokenizer").exists():
            from bittern.data.tokenizer import load_tokenizer

            self.data.check_tokenizer(load_tokenizer(self.out / "tokenizer").identity())
        cfg.model = cfg.model.resolved(vocab_size=self.data.vocab_size)
        if cfg.model.vocab_size < self.data.vocab_size:
            raise BitternError(
                f"model.vocab_size {cfg.model.vocab_size} is smaller than the "
                f"tokenizer's {self.data.vocab_size}"
            )
        saved = self.out / "config.toml"
        if resuming and saved.exists():
            old = config_from_dict(tomllib.loads(saved.read_text()))
            old.data.tokenizer = resolved_tokenizer(old.data, self.data)  # runs saved with "" resume
            _check_compatible(old, cfg)
        if cfg.train.seq_len > cfg.model.max_seq_len:
            raise BitternError(
                f"train.seq_len {cfg.train.seq_len} exceeds model.max_seq_len {cfg.model.max_seq_len}"
            )

    # ---- checkpoints -------------------------------------------------------------------
    def _train_state(self) -> dict:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "data_offset": self.data_offset,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "clipper": self.clipper.state_dict(),
            "guard": self.guard.state_dict(),
            "plateau": self.plateau.state_dict(),
            "progressive": {"start": self.progressive_start, "mode": self.progressive_mode},
            "prev_grad_norm": self.prev_grad_norm,
        }

    def _load(self, ckpt: Path) -> None:
        """Restore model and every piece of training state from a verified checkpoint."""
        state, rng = load_training(ckpt, self.wrapped, self.model, self.optimizer, self.dist)
        if self.packed:
            pack_shards(self.model)  # the loaded weights, packed for the all-gathers
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.clipper.load_state_dict(state["clipper"])
        self.guard.load_state_dict(state["guard"])
        self.plateau.load_state_dict(state["plateau"])
        self.progressive_start = state["progressive"]["start"]
        self.progressive_mode = state["progressive"]["mode"]
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.data_offset, self.prev_grad_norm = state["data_offset"], state["prev_grad_norm"]
        self.quant_lambda = None
        self.layer_lambdas.reset()
        if rng is not None:
            set_rng_state(rng)

    def _newest_valid(self) -> Path | None:
        """The newest committed checkpoint that verifies; older ones only if checkpoint.fallback."""
        for ckpt in reversed(list_checkpoints(self.out)):
            try:
                verify_checkpoint(ckpt)
                return ckpt
            except BitternError as e:
                if not self.cfg.checkpoint.fallback:
                    raise BitternError(f"{e} (pass --fallback to resume from an older checkpoint)") from None
                print(f"bittern: skipping bad checkpoint: {e}", file=sys.stderr)
        return None

    def _restore_newest(self) -> Path | None:
        """Load the newest valid checkpoint; None if the run saved none yet (it starts over).

        Checkpoints that all fail to verify are an error, and stay as they are: starting over
        is a separate decision (--overwrite). Then rank 0 clears what killed saves left and
        drops the metrics of steps the run will compute again.
        """
        ckpt = self._newest_valid()
        if ckpt is None and list_checkpoints(self.out):
            raise BitternError(
                f"no checkpoint in {self.out / 'checkpoints'} verifies (all left as they are); "
                "to train this run again from step 0 use --overwrite instead of --resume (deletes the run)"
            )
        if ckpt is not None:
            self._load(ckpt)
        if self.is_main:
            for stale in remove_stale_saves(self.out):
                print(f"bittern: removed {stale.name}, left by a save that was killed", file=sys.stderr)
            truncate_metrics(self.out / "metrics.jsonl", self.step)
        return ckpt

    def save(self) -> Path:
        path = save_training(
            self.out,
            self.step,
            self.wrapped,
            self.model,
            self.optimizer,
            self._train_state(),
            rng_state(),
            self.config_toml,
            self.dist,
        )
        if self.is_main:
            prune_checkpoints(self.out, self.cfg.checkpoint.keep_last, protect=self.resumed_from)
        return path

    def _rollback(self, reason: str) -> None:
        """Back to the last good checkpoint with a lower LR, skipping the offending batches."""
        bad_batch = self.step - 1 + self.data_offset  # train_step has already advanced the step
        if not self.guard.begin_rollback():
            raise TrainingStopped(
                f"gave up after {self.cfg.guard.max_rollbacks} rollbacks: {reason}", EXIT_GAVE_UP
            )
        ckpt = self._newest_valid()
        if ckpt is None:
            raise TrainingStopped(f"no checkpoint to roll back to: {reason}", EXIT_GAVE_UP)
        guard_state = self.guard.state_dict()
        self._load(ckpt)
        self.guard.load_state_dict(guard_state)  # the rollback count and LR factor persist
        self.data_offset = bad_batch + 1 - self.step
        self.logger.supersede(self.step)  # the records of the steps about to be replayed
        message = f"rolled back to step {self.step} ({reason}); LR x{self.guard.lr_factor:g}"
        self._report([message])

    # ---- one step ----------------------------------------------------------------------
    def _apply_schedules(self) -> tuple[float, float]:
        c, total = self.cfg, self.cfg.train.steps
        prog = replace(c.progressive, schedule=self.progressive_mode)
        cap = quant_lambda(self.step, total, prog, self.progressive_start)
        lam = self.layer_lambdas.apply(self.model, self.step, cap=cap)  # per block: init.strategy
        if lam != self.quant_lambda:
            configure_fast_path(self.model, self.kernel_options)  # the fused path runs only at lambda 1
            self.quant_lambda = lam
        lr = c.optim.lr * self.guard.lr_factor * lr_multiplier(self.step, total, c.schedule)
        wd = weight_decay_at(self.step, total, c.schedule, c.optim.weight_decay)
        apply_lr_and_wd(self.optimizer, lr, wd)
        return lr, wd

    def _micro_batches(self):
        """This rank's micro-batches of this step, on the device, loaded one at a time."""
        t = self.cfg.train
        batch = self.step + self.data_offset
        for m in range(self.accum):
            start = self.rank * self.per_rank + m * self.micro
            x, y = self.data.train_batch(t.seed, batch, t.batch_size, t.seq_len, start, self.micro)
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One micro-batch's loss: the loss.* terms, the MoE layers' balancing and z-losses."""
        g = self.cfg.guard
        loss = self._micro_batch_loss(x, y)
        if self.moe:
            loss = loss + self.moe.collect()
        if self.step + self.data_offset == g.inject_nan_step and g.inject_nan_rank in (-1, self.rank):
            loss = loss * float("nan")  # test-only fault injection
        return loss

    def _build_losses(self):
        """The loss terms of loss.*, and the frozen teacher when a term needs one."""
        c = self.cfg
        loss_fn = LossComputer(c.loss, c.model.dim, c.model.n_layers)
        if not loss_fn.needs_teacher:
            return (loss_fn if loss_fn.cfg.quant_reg or loss_fn.cfg.hard_token_ratio < 1 else None), None
        source = c.loss.teacher or self.init_source
        if not source:
            raise BitternError(
                "loss.distill/distill_hidden/margin need a teacher: set loss.teacher or --init"
            )
        teacher = load_teacher(source, self.device, student_tokenizer=self.data.tokenizer())
        tc = teacher.model.config
        loss_fn = LossComputer(c.loss, c.model.dim, c.model.n_layers, tc.dim, tc.n_layers).to(self.device)
        if list(loss_fn.parameters()):
            self.optimizer.add_param_group(
                {
                    "params": list(loss_fn.parameters()),
                    "weight_decay": 0.0,
                    "lr_mult": 1.0,
                    "decay": False,
                    "name": "projections",
                }
            )
        return loss_fn, teacher

    def _micro_batch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, or the loss.* combination (parts accumulated in self.loss_parts)."""
        if self.loss_fn is None:
            with self.autocast:
                logits = self.forward(x)
            return self.cross_entropy(logits, y)
        hidden = self.loss_fn.needs_hidden
        with self.autocast:
            out = self.forward(x, return_hidden=True) if hidden else self.forward(x)
            logits, hiddens = out if hidden else (out, None)
            teacher = self.teacher(x, hidden=hidden) if self.teacher else None
        loss, parts = self.loss_fn(logits, y, hiddens, teacher, model=self.model)
        for k, v in parts.items():
            self.loss_parts[k] = self.loss_parts.get(k, 0.0) + v / self.accum
        return loss

    def _gradient_sync(self, last: bool):
        """DDP's no_sync (FSDP2: requires_gradient_sync) on all but the last micro-batch."""
        if not self.dist.enabled:
            return contextlib.nullcontext()
        if self.fsdp:
            set_gradient_sync(self.wrapped, "fsdp", last)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last else self.wrapped.no_sync()

    def train_step(self, want_layer_norms: bool = False) -> StepOutcome:
        """One optimizer step (or a judged skip); advances self.step either way."""
        c = self.cfg
        alpha = alpha_scale(self.prev_grad_norm, c.loss_scale) if c.loss_scale.alpha else 1.0
        self.loss_parts: dict[str, torch.Tensor] = {}
        outcome = self.step_fn(self._micro_batches(), alpha, want_layer_norms)
        self.layer_norms = outcome.layer_norms
        if outcome.action == OK:
            self.prev_grad_norm = outcome.grad_norm
        if self.moe:  # routing biases move only with the weights
            self.moe.end_step(self.dist, update_bias=outcome.action == OK)
        self.step += 1
        self.tokens_seen += c.train.batch_size * c.train.seq_len
        return outcome

    def validate(self) -> dict[str, float]:
        """Validation figures of the same windows on any layout: the first train.eval_batches x
        train.batch_size windows of the split (0: all), shared out over the ranks and summed."""
        t = self.cfg.train
        self.step_fn.codes.sync()  # weights loaded since the last step (a compiled model cannot see it)
        total = val_windows(self.data, t.seq_len)
        n = min(total, t.eval_batches * t.batch_size) if t.eval_batches else total
        batches = -(-len(rank_share(n, 0, self.world)) // self.micro)  # rank 0 has the longest share
        mine = rank_share(n, self.rank, self.world)
        sums = score_windows(
            self.forward, self.data, t.seq_len, mine, self.micro, batches, self.device, self.autocast
        )
        return figures(sum_across_ranks(sums, self.dist), self.data, n, total)

    # ---- the loop ----------------------------------------------------------------------
    def _due(self, every: int, step: int) -> bool:
        return every > 0 and step % every == 0

    def run(self, until: int | None = None) -> TrainResult:
        """Train to train.steps, or stop (with a checkpoint) once step `until` is done."""
        t = self.cfg.train
        complete = self.resumed_from is not None and self.step >= t.steps
        last = self.last_step = min(t.steps, until or t.steps)
        bar = tqdm(total=t.steps, initial=self.step, disable=not self.progress, desc="train", unit="step")
        self.window = [0, time.perf_counter()]
        val = None
        self.model.train()
        try:
            with StopRequest() as stop:
                while self.step < last:
                    val = self._iteration(bar) or val
                    stopping = any_across_ranks(stop.requested, self.device, self.dist)
                    if stopping and self.step < last:
                        self.save()
                        raise TrainingStopped(
                            f"stopped by signal {stop.signal or 'on another rank'} at step {self.step}; "
                            "checkpoint saved, rerun with --resume to continue",
                            EXIT_PREEMPTED,
                        )
        finally:
            bar.close()
            self.logger.close()
            if self.health:
                self.health.detach()
        if val is None:
            val = self.validate()
        return TrainResult(
            self.out,
            self.step,
            val["loss"],
            val["perplexity"],
            val["bits_per_byte"],
            self.is_main,
            scope(val),
            complete,
        )

    def _iteration(self, bar) -> dict | None:
        """One step plus whatever is due after it: logging, validation, checkpoint."""
        t, c = self.cfg.train, self.cfg
        nxt = self.step + 1
        log_due = self._due(c.log.every, nxt) or nxt == t.steps
        health_due = self._due(c.log.health_every or c.log.every, nxt)
        health_due = health_due and self.health is not None
        if health_due:
            self.health.arm()
            self.health.set_baseline(self.model)
        lr, wd = self._apply_schedules()
        outcome = self.train_step(want_layer_norms=log_due)
        self.window[0] += t.batch_size * t.seq_len
        messages = self.alerts.check(self.step, outcome.loss, outcome.grad_norm) + self.moe.alerts()
        if outcome.reason:
            messages.append(f"{outcome.action}: {outcome.reason}")
        if messages:
            self._report(messages)
        if outcome.action == ROLLBACK:
            self._rollback(outcome.reason)
            bar.n = self.step
            return None
        record = self._log_record(outcome, lr, wd, health_due) if log_due else {}
        val = None
        if self._due(t.eval_every, self.step) or self.step == t.steps:
            val = self.validate()
            record |= {
                "loss": outcome.loss,
                "lr": lr,
                "grad_norm": outcome.grad_norm,
                "val_loss": val["loss"],
                "val_perplexity": val["perplexity"],
                "val_bits_per_byte": val["bits_per_byte"],
                "val_tokens": val["tokens"],
            }
            if self.is_main:
                bar.write(
                    f"step {self.step}: val loss {val['loss']:.4f}, perplexity {val['perplexity']:.2f} "
                    f"({scope(val)})"
                )
            self._check_plateau(val["loss"])
        if self.health and self._due(c.log.histogram_every or 10 * c.log.every, self.step):
            log_weight_histograms(self.logger, self.step, self.model)
        if record:
            self.logger.log(self.step, record)
            bar.set_postfix(loss=f"{outcome.loss:.3f}", tok_s=f"{record.get('tokens_per_sec', 0):,.0f}")
        if self._due(c.checkpoint.every, self.step) or self.step == self.last_step:
            self.save()
        bar.update(1)
        return val

    def _log_record(self, outcome: StepOutcome, lr: float, wd: float, health_due: bool) -> dict:
        elapsed = time.perf_counter() - self.window[1]
        tok_s = self.window[0] / max(elapsed, 1e-9)
        self.window = [0, time.perf_counter()]
        record = {
            "loss": outcome.loss,
            "lr": lr,
            "weight_decay": wd,
            "grad_norm": outcome.grad_norm,
            "loss_scale": self.scaler.scale if self.scaler else 1.0,
            "quant_lambda": self.quant_lambda,
            "tokens_per_sec": tok_s,
            "tokens_seen": self.tokens_seen,
            "skipped_steps": self.guard.skipped_total,
            "rollbacks": self.guard.rollbacks,
        }
        if self.cfg.loss_scale.alpha:
            record["alpha"] = alpha_scale(self.prev_grad_norm, self.cfg.loss_scale)
        utilization = mfu(tok_s, self.model.flops_per_token(self.cfg.train.seq_len), self.peak_flops)
        if utilization is not None:
            record["mfu"] = utilization
        record |= memory_stats(self.device)
        reset_peak(self.device)
        record |= {f"grad_norm/{k}": v for k, v in self.layer_norms.items()}
        record |= {k: float(v) for k, v in getattr(self, "loss_parts", {}).items()}
        if health_due:
            record |= self.health.snapshot(self.model)
        return record | self.moe.record()

    def _check_plateau(self, val_loss: float) -> None:
        """After guard.plateau_patience evaluations without improvement, restart progressive λ."""
        if self.plateau.update(val_loss) and self.progressive_start == 0:
            self.progressive_start = self.step
            self.progressive_mode = (
                self.cfg.progressive.schedule if self.cfg.progressive.schedule != "none" else "linear"
            )
            self._report(
                [f"validation plateau: progressive quantization ({self.progressive_mode}) from here"]
            )

    def close(self) -> None:
        """Drop the DDP/FSDP wrapper before its process group: the other order can hang in gloo."""
        self.forward = self.wrapped = None
        gc.collect()
        shutdown(self.dist)

    def _report(self, messages: list[str]) -> None:
        if self.is_main:
            report(self.step, messages, self.logger)


def train(
    cfg: Config,
    out: Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    init: str | None = None,
) -> TrainResult:
    """Train `cfg` into run folder `out` (starting from run `init` if given); final validation figures."""
    trainer = Trainer(cfg, out, resume=resume, overwrite=overwrite, progress=progress, init=init)
    try:
        return trainer.run()
    finally:
        trainer.close()
