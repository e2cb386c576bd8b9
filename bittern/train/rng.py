"""Seeding and capturing every RNG a run touches, for exact resume."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _numpy_state() -> dict:
    """NumPy's global generator, whole: key, position and cached Gaussian (plain values for weights_only)."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "key": key.tolist(), "pos": pos, "has_gauss": has_gauss, "cached_gaussian": cached}


def _set_numpy_state(state: dict | list) -> None:
    if isinstance(state, list):  # checkpoints before the position was kept: the key alone
        state = {"name": "MT19937", "key": state, "pos": 624, "has_gauss": 0, "cached_gaussian": 0.0}
    key = np.array(state["key"], dtype=np.uint32)
    np.random.set_state((state["name"], key, state["pos"], state["has_gauss"], state["cached_gaussian"]))


def rng_state() -> dict:
    """Python, NumPy, torch and (if present) CUDA generator states, as checkpointable values."""
    state = {"python": random.getstate(), "numpy": _numpy_state()}
    state["torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    _set_numpy_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
