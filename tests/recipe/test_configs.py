"""The shipped configs load, and every ternary one ends its run fully ternary.

A late-quantization config that never reaches lambda = 1 (a ramp too slow for its step count)
would train and export a model that is not the ternary model it claims to be; one without
sub-layer norms would not run its full-precision phase as the twin's math (issue 15).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bittern.config import load_config
from bittern.train.progressive import quant_lambda

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))


def test_the_configs_folder_is_found():
    assert len(CONFIGS) >= 5, CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_ends_ternary(path):
    cfg = load_config(str(path), [])
    if cfg.model.quant != "ternary":
        return
    steps = cfg.train.steps
    lams = [quant_lambda(s, steps, cfg.progressive) for s in range(steps)]
    assert all(b >= a for a, b in zip(lams, lams[1:], strict=False)), "lambda never falls"
    ternary = sum(lam == 1.0 for lam in lams)
    assert ternary >= 0.1 * steps, f"only {ternary} of {steps} steps at lambda 1"
    assert lams[-1] == 1.0
    if lams[0] < 1.0 and cfg.progressive.schedule == "stepped":
        # the full-precision phase is the twin's math only with sub-layer norms
        assert cfg.model.norm_placement == "sublayer", path.name
