"""Tiny trained runs for the export tests, one per architecture, trained once per session."""

from __future__ import annotations

import tomllib
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
# The built-in job's model, as configs/shakespeare-tiny.toml has it (sizes and all), in place of
# the tiny test model; trained like the others for a few steps on the test corpus.
BUILTIN = "builtin"
BUILTIN_CONFIG = Path(__file__).parents[2] / "configs" / "shakespeare-tiny.toml"


def builtin_model() -> dict:
    return tomllib.loads(BUILTIN_CONFIG.read_text())["model"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, dataset):
    """Function (name in ARCHS, or BUILTIN) -> run folder of a model trained for 20 tiny steps."""
    from bittern.train import train

    cache: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in cache:
            out = tmp_path_factory.mktemp("runs") / name
            data = tiny_config_dict(dataset, model=ARCHS.get(name, {}))
            if name == BUILTIN:
                data["model"] = builtin_model()
            cfg = config_from_dict(data)
            train(cfg, out, progress=False)
            cache[name] = out
        return cache[name]

    return make
