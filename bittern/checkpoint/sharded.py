"""Checkpoints of a model and optimizer that may be spread over ranks (DDP, FSDP2).

Two formats, both atomic and verified (store.commit): one process writes model.safetensors
and the full optimizer state (keyed by parameter name); several ranks write a
torch.distributed.checkpoint folder `dcp/` (each rank its shards) plus one RNG file per
rank. Either loads at any world size: DCP reshards, and the full format is scattered by
torch.distributed.checkpoint.state_dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)

from bittern.checkpoint.store import (
    CONFIG_FILE,
    STATE_FILE,
    checkpoint_dir,
    commit,
    fresh_tmp_dir,
    load_train_state,
    load_weights,
    save_checkpoint,
)
from bittern.distributed.setup import DistInfo, barrier

DCP_DIR = "dcp"
FULL = StateDictOptions(full_state_dict=True)


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def is_sharded(ckpt: Path) -> bool:
    return (Path(ckpt) / DCP_DIR).is_dir()


def save_training(
    run_dir: Path,
    step: int,
    model: nn.Module,
    plain: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_state: dict[str, Any],
    rng: dict,
    config_toml: str,
    info: DistInfo,
) -> Path:
    """Checkpoint `step`: the full format on one process, DCP shards on several. Every rank calls it."""
    if not info.enabled:
        optim = get_optimizer_state_dict(model, optimizer, options=FULL)
        state = {**train_state, "optimizer": optim, "rng": rng}
        return save_checkpoint(run_dir, step, plain, state, config_toml)
    final = checkpoint_dir(run_dir, step)
    tmp = final.parent / f".tmp-{final.name}-dcp"
    if info.is_main:
        fresh_tmp_dir(final, suffix="dcp")
    barrier(info)
    msd, osd = get_state_dict(model, optimizer)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / DCP_DIR))
    torch.save(rng, tmp / rng_file(info.rank))
    barrier(info)
    if info.is_main:
        torch.save(train_state, tmp / STATE_FILE)
        (tmp / CONFIG_FILE).write_text(config_toml)
        commit(tmp, final, step)
    barrier(info)
    return final


def load_model_weights(ckpt: Path, plain: nn.Module) -> None:
    """Weights only, into an unwrapped model (any format), e.g. for bittern.load."""
    if is_sharded(ckpt):
        sd = {"model": get_model_state_dict(plain)}
        dcp.load(sd, checkpoint_id=str(Path(ckpt) / DCP_DIR))
        set_model_state_dict(plain, sd["model"])
    else:
        load_weights(ckpt, plain)


def load_training(
    ckpt: Path, model: nn.Module, plain: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo
) -> tuple[dict[str, Any], dict | None]:
    """Restore weights and optimizer into `model` (wrapped or not); return (train state, this rank's RNG)."""
    state = load_train_state(ckpt)
    if is_sharded(ckpt):
        msd, osd = get_state_dict(model, optimizer)
        sd = {"model": msd, "optim": osd}
        dcp.load(sd, checkpoint_id=str(Path(ckpt) / DCP_DIR))
        set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        path = Path(ckpt) / rng_file(info.rank)
        rng = torch.load(path, weights_only=True) if path.exists() else None
        return state, rng
    optim = state["optimizer"]
    if holds_some_experts(plain):  # expert parallelism: this rank's experts of the full checkpoint
        own = set(plain.state_dict())
        plain.load_state_dict({k: v for k, v in _full_weights(ckpt, plain).items() if k in own})
        optim = _restrict_optimizer(optim, own)
    elif _is_sharded_model(plain):
        set_model_state_dict(model, _full_weights(ckpt, plain), options=FULL)
    else:
        load_weights(ckpt, plain)
    set_optimizer_state_dict(model, optimizer, optim, options=FULL)
    return state, state["rng"]


def holds_some_experts(plain: nn.Module) -> bool:
    from bittern.distributed.expert_parallel import ExpertShard

    return any(isinstance(m, ExpertShard) for m in plain.modules())


def _restrict_optimizer(optim: dict, names: set[str]) -> dict:
    """A full optimizer state (keyed by parameter name) cut down to the parameters `names`."""
    groups = [{**g, "params": [p for p in g["params"] if p in names]} for g in optim["param_groups"]]
    return {"state": {k: v for k, v in optim["state"].items() if k in names}, "param_groups": groups}


def _is_sharded_model(plain: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in plain.parameters())


def _full_weights(ckpt: Path, plain: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of a single-file checkpoint, tied weights filled back in."""
    from safetensors.torch import load_file

    from bittern.checkpoint.store import MODEL_FILE

    weights = load_file(str(Path(ckpt) / MODEL_FILE))
    for name, tensor in plain.state_dict().items():
        if name not in weights:  # a tied weight safetensors stored once
            for other, t in plain.state_dict().items():
                if other in weights and t.data_ptr() == tensor.data_ptr():
                    weights[name] = weights[other]
    return weights
