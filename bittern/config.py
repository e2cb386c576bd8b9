"""Run configuration: dataclasses loaded from TOML, with dotted command-line overrides.

Every key is checked once, at load: unknown sections or keys and wrongly typed values
raise BitternError naming the key. Defaults are the built-in job (a tiny 1.58-bit model
on the Shakespeare corpus, on the CPU if there is no GPU).
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bittern.errors import BitternError
from bittern.models.config import ModelConfig

SCHEDULES = ("cosine", "linear", "constant", "two_stage")
CLIP_MODES = ("norm", "value", "layer", "adaptive", "none")
PROGRESSIVE = ("none", "linear", "stepped")
SPIKE_ACTIONS = ("warn", "skip", "rollback")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
INIT_STRATEGIES = ("random", "pretrained", "progressive", "layerwise")
INT8_MM_KERNELS = ("tma", "pointer")  # bittern.kernels.int8_mm.KERNELS (not imported here: Triton)


@dataclass
class DataConfig:
    source: str = "shakespeare"  # a built-in corpus, prepared on first use and cached
    path: str = ""  # a folder made by `bittern data prepare` (takes precedence over source)
    tokenizer: str = ""  # byte | bpe | a local Hugging Face path; "": byte, or the prepared folder's
    vocab_size: int = 8192  # for tokenizer = "bpe"
    val_fraction: float = 0.05
    cache_dir: str = ""  # default ~/.cache/bittern


@dataclass
class TrainConfig:
    steps: int = 600
    seed: int = 0
    batch_size: int = 32  # sequences per optimizer step, all ranks together
    micro_batch_size: int = 0  # sequences per forward/backward on one rank; 0: all of them
    seq_len: int = 128
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    eval_every: int = 100
    eval_batches: int = 16  # 0: the whole validation split
    compile: bool = False
    compile_backend: str = "inductor"  # torch.compile backend of train.compile ("aot_eager": no C++ compiler)


@dataclass
class OptimConfig:
    lr: float = 3e-3  # peak LR; 1.58-bit models want about 10x their full-precision twin's
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # matrices only: never norms, biases or embeddings
    layer_lr_decay: float = 1.0  # block i of L gets lr * layer_lr_decay ** (L - 1 - i)
    embed_lr_mult: float = 1.0
    attn_lr_mult: float = 1.0
    mlp_lr_mult: float = 1.0
    head_lr_mult: float = 1.0


@dataclass
class ScheduleConfig:
    name: str = "two_stage"  # two_stage | cosine | linear | constant (benchmarks/RESULTS.md)
    warmup_frac: float = 0.1  # of train.steps, unless warmup_steps is set
    warmup_steps: int = -1
    min_lr_ratio: float = 0.1  # final LR as a fraction of the peak
    stage2_frac: float = 0.5  # two_stage: where the drop happens
    stage2_lr_ratio: float = 2 / 3  # two_stage: LR after the drop, as a fraction of the peak
    stage2_weight_decay: float = 0.0  # two_stage: weight decay in stage 2


@dataclass
class ClipConfig:
    mode: str = "norm"  # norm (global) | value | layer (per parameter) | adaptive | none
    max_norm: float = 1.0  # norm / layer: max gradient norm
    value: float = 1.0  # value: max |gradient element|
    adaptive_init: float = 0.5  # adaptive: threshold before any statistics exist
    adaptive_window: int = 100  # adaptive: recent steps the statistic looks at
    adaptive_factor: float = 2.0  # adaptive: threshold = factor * running median norm


@dataclass
class LossScaleConfig:
    fp16_init: float = 65536.0  # dynamic scaler (train.precision = "fp16")
    fp16_growth: float = 2.0
    fp16_backoff: float = 0.5
    fp16_growth_interval: int = 2000
    alpha: bool = False  # gradient-norm-driven alpha = min(2, 1 + (1 - |g| / threshold)), >= 1
    alpha_threshold: float = 1e-2
    alpha_max: float = 2.0


@dataclass
class ProgressiveConfig:
    schedule: str = "none"  # none (quantized from step 0) | linear | stepped
    warmup_steps: int = 1000  # linear: lambda 0 -> 1 over this many steps
    start_frac: float = 0.1  # stepped: full precision for this fraction of training
    interval: int = 100  # stepped: steps between increments
    delta: float = 0.1  # stepped: lambda increment
    activations: bool = True  # blend activations too (else they are quantized throughout)


@dataclass
class GuardConfig:
    skip_nonfinite: bool = True  # NaN/Inf loss or gradients: skip the update
    spike_window: int = 50  # recent losses the spike detector compares against
    spike_zscore: float = 6.0  # spike: loss > mean + zscore * std of the window
    spike_action: str = "warn"  # warn | skip | rollback
    max_bad_steps: int = 3  # this many skipped steps in a row -> rollback
    rollback_lr_factor: float = 0.5  # LR multiplier after each rollback
    max_rollbacks: int = 3  # then give up (exit code 3)
    plateau_patience: int = 0  # evaluations without improvement -> progressive fallback (0: off)
    alert_grad_spike: float = 5.0  # alert: grad norm > this x median of its last 50 (0: off)
    alert_grad_norm: float = 0.0  # alert: grad norm above this (0: off)
    inject_nan_step: int = -1  # test-only: make the loss of this batch index NaN
    inject_nan_rank: int = -1  # test-only: only on this rank (-1: every rank)


@dataclass
class InitConfig:
    strategy: str = "random"  # random | pretrained | progressive | layerwise (the last three need --init)
    progressive_steps: int = (
        1000  # progressive: lambda 0 -> 1 over this many steps from the pretrained weights
    )
    layerwise_order: str = "bottom_up"  # layerwise: bottom_up | top_down
    layerwise_group: int = 1  # layerwise: blocks quantized together
    layerwise_interval: int = 100  # layerwise: steps between groups


@dataclass
class LossConfig:
    distill: float = 0.0  # w: (1 - w) * CE + w * T^2 * KL(teacher || student); 0: off
    temperature: float = 1.0  # T
    teacher: str = ""  # run folder, Hugging Face folder or .gguf; "": the --init source
    distill_hidden: float = 0.0  # weight of the per-layer hidden-state loss (0: off)
    vocab_chunk: int = 8192  # distillation processes the vocabulary in chunks of this size
    quant_reg: float = 0.0  # weight of the regularizer pulling latent weights toward {-g, 0, +g}
    hard_token_ratio: float = 1.0  # keep the hardest fraction of token losses (1: all; 0.5 when on)
    margin: float = 0.0  # weight of the auxiliary triplet margin loss (0: off)
    margin_value: float = 0.3


@dataclass
class KernelsConfig:
    enabled: bool = True  # fused Triton kernels on CUDA when available; false: the PyTorch reference
    grad_input_int8: bool = False  # backward grad_input with row-wise int8 grad_output
    grad_weight_int8: bool = False  # backward grad_weight on int8 tensor cores
    recompute_codes: bool = True  # backward remakes activation codes from x (false: save them, more memory)
    int8_mm: str = "tma"  # the int8 GEMM on Hopper: tma (persistent, TMA loads) | pointer


@dataclass
class DistConfig:
    mode: str = "ddp"  # ddp | fsdp (FSDP2 fully_shard per block) when launched on several ranks
    timeout: float = 300.0  # seconds a collective may wait before the process group fails
    bucket_cap_mb: int = 25  # DDP gradient bucket size
    packed_all_gather: bool = False  # fsdp: all-gather ternary codes, 2 bits each, not the weights
    reshard_after_forward: bool = True  # fsdp: free gathered block weights after forward (False: keep
    # them for the backward: one all-gather per micro-batch fewer, the whole bf16 model in memory)
    expert_parallel: bool = False  # MoE: shard each layer's experts over the ranks (all-to-all dispatch)


@dataclass
class CheckpointConfig:
    every: int = 200  # steps between checkpoints; the last step is always saved
    keep_last: int = 3  # 0 keeps them all; the one resumed from is never deleted
    fallback: bool = False  # on resume, skip a corrupt newest checkpoint for an older one


@dataclass
class LogConfig:
    every: int = 10
    tensorboard: bool = True
    health_every: int = 0  # ternary health stats; 0: every log.every
    histogram_every: int = 0  # latent-weight histograms; 0: 10 * log.every
    peak_tflops: float = 0.0  # for MFU; 0: looked up from the GPU name
    moe_dead_after: int = 100  # alert when an expert gets no token for this many steps in a row; 0: off


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    loss_scale: LossScaleConfig = field(default_factory=LossScaleConfig)
    progressive: ProgressiveConfig = field(default_factory=ProgressiveConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    init: InitConfig = field(default_factory=InitConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    kernels: KernelsConfig = field(default_factory=KernelsConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


def _sections() -> dict[str, type]:
    return typing.get_type_hints(Config)


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(key: str, value: Any, hint) -> Any:
    """Check `value` against the annotation `hint`, converting int->float where harmless."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and type(None) in typing.get_args(hint):
            return None
        for opt in options:
            try:
                return _coerce(key, value, opt)
            except BitternError:
                continue
        raise BitternError(f"config key '{key}' must be {hint}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise BitternError(f"config key '{key}' must be a list, got {value!r}")
        (item,) = typing.get_args(hint) or (Any,)
        return [_coerce(key, v, item) for v in value] if item is not Any else value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Any or (isinstance(hint, type) and isinstance(value, hint)):
        if hint is int and isinstance(value, bool):
            raise BitternError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    raise BitternError(f"config key '{key}' must be of type {getattr(hint, '__name__', hint)}, got {value!r}")


def _apply(cfg: Config, section: str, key: str, value: Any) -> None:
    sections = _sections()
    if section not in sections:
        raise BitternError(f"unknown config section '{section}'{_suggest(section, sections)}")
    obj = getattr(cfg, section)
    hints = typing.get_type_hints(type(obj))
    if key not in hints:
        raise BitternError(f"unknown config key '{section}.{key}'{_suggest(key, hints)}")
    setattr(obj, key, _coerce(f"{section}.{key}", value, hints[key]))


def parse_value(text: str) -> Any:
    """A command-line value as TOML (numbers, booleans, lists, quoted strings), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(args: list[str]) -> list[tuple[str, Any]]:
    """['--train.steps=10', '--model.quant', 'none'] -> [('train.steps', 10), ('model.quant', 'none')]."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise BitternError(f"unexpected argument '{arg}' (overrides look like --section.key=value)")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise BitternError(f"override '--{key}' has no value")
            value, i = args[i + 1], i + 1
        out.append((key, parse_value(value)))
        i += 1
    return out


def config_from_dict(data: dict[str, Any], overrides: list[tuple[str, Any]] = ()) -> Config:
    """Build and validate a Config from nested dicts plus (dotted key, value) overrides."""
    cfg = Config()
    for section, values in data.items():
        if not isinstance(values, dict):
            raise BitternError(f"config entry '{section}' must be a [section] table")
        for key, value in values.items():
            _apply(cfg, section, key, value)
    for dotted, value in overrides:
        section, _, key = dotted.partition(".")
        _apply(cfg, section, key, value)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[tuple[str, Any]] = ()) -> Config:
    """Read a TOML file (or the built-in defaults when `path` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise BitternError(f"config file not found: {p}")
        try:
            data = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise BitternError(f"malformed config {p}: {e}") from None
    return config_from_dict(data, overrides)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise BitternError(message)


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    t, o, s = cfg.train, cfg.optim, cfg.schedule
    _check(t.steps > 0, "train.steps must be positive")
    _check(t.batch_size > 0, "train.batch_size must be positive")
    _check(t.micro_batch_size >= 0, "train.micro_batch_size must be >= 0")
    _check(t.seq_len > 1, "train.seq_len must be at least 2")
    _check(t.precision in PRECISIONS, f"train.precision must be one of {PRECISIONS}")
    _check(t.eval_every >= 0 and t.eval_batches >= 0, "train.eval_every/eval_batches must be >= 0")
    _check(o.lr > 0, "optim.lr must be positive")
    _check(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optim.beta1/beta2 must be in [0, 1)")
    _check(o.weight_decay >= 0, "optim.weight_decay must be >= 0")
    _check(s.name in SCHEDULES, f"schedule.name must be one of {SCHEDULES}")
    _check(cfg.clip.mode in CLIP_MODES, f"clip.mode must be one of {CLIP_MODES}")
    _check(cfg.progressive.schedule in PROGRESSIVE, f"progressive.schedule must be one of {PROGRESSIVE}")
    _check(
        cfg.kernels.int8_mm in INT8_MM_KERNELS,
        f"kernels.int8_mm must be 'tma' or 'pointer', got {cfg.kernels.int8_mm!r}",
    )
    _check(cfg.dist.mode in ("ddp", "fsdp"), "dist.mode must be ddp or fsdp")
    _check(cfg.dist.timeout > 0, "dist.timeout must be positive")
    _check(cfg.init.strategy in INIT_STRATEGIES, f"init.strategy must be one of {INIT_STRATEGIES}")
    _check(
        cfg.init.layerwise_order in ("bottom_up", "top_down"), "init.layerwise_order: bottom_up or top_down"
    )
    _check(0 <= cfg.loss.distill <= 1, "loss.distill must be in [0, 1]")
    _check(0 < cfg.loss.hard_token_ratio <= 1, "loss.hard_token_ratio must be in (0, 1]")
    _check(cfg.loss.temperature > 0, "loss.temperature must be positive")
    _check(cfg.guard.spike_action in SPIKE_ACTIONS, f"guard.spike_action must be one of {SPIKE_ACTIONS}")
    _check(cfg.guard.alert_grad_spike >= 0 and cfg.guard.alert_grad_norm >= 0, "guard.alert_* must be >= 0")
    _check(0 <= s.warmup_frac < 1, "schedule.warmup_frac must be in [0, 1)")
    _check(0 <= s.min_lr_ratio <= 1, "schedule.min_lr_ratio must be in [0, 1]")
    _check(cfg.checkpoint.every >= 0 and cfg.checkpoint.keep_last >= 0, "checkpoint.* must be >= 0")
    _check(cfg.log.every > 0, "log.every must be positive")
    _check(bool(cfg.data.path or cfg.data.source), "set data.path or data.source")
    _check(0 < cfg.data.val_fraction < 1, "data.val_fraction must be in (0, 1)")
    m = cfg.model
    _check(m.quant in ("ternary", "none"), f"model.quant must be 'ternary' or 'none', got {m.quant!r}")
    from bittern.models.config import PRESETS

    _check(m.preset in PRESETS, f"model.preset must be one of {sorted(PRESETS)}, got {m.preset!r}")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def to_toml(cfg: Config) -> str:
    """The config as TOML that load_config reads back to an equal Config (None keys omitted)."""
    lines = []
    for section, values in cfg.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
        lines.append("")
    return "\n".join(lines)
