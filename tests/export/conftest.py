"""Tiny trained runs for the export tests, one per architecture, trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from bittern.config import config_from_dict
from tests.conftest import tiny_config_dict

ARCHS = {
    "llama": {},
    "bitnet": {"arch": "bitnet"},
    "llama-channel": {"weight_granularity": "channel"},
    "gguf": {
        "norm_placement": "sublayer",
        "tie_embeddings": True,
        "dim": 256,
        "n_heads": 4,
        "n_kv_heads": 2,
        "ffn_dim": 512,
    },
}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, dataset):
    """Function (name in ARCHS) -> run folder of a tiny model trained for 20 steps."""
    from bittern.train import train

    cache: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in cache:
            out = tmp_path_factory.mktemp("runs") / name
            cfg = config_from_dict(tiny_config_dict(dataset, model=ARCHS[name]))
            train(cfg, out, progress=False)
            cache[name] = out
        return cache[name]

    return make
