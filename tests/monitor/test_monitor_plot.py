"""plot_run on a synthetic metrics.jsonl, and its errors."""

import math

import pytest

from bittern.errors import BitternError
from bittern.monitor import MetricsLogger, plot_run


def write_run(run_dir):
    logger = MetricsLogger(run_dir, tensorboard=False)
    for step in range(1, 21):
        loss = math.nan if step == 7 else 5.0 / step
        record = {"loss": loss, "lr": 1e-3 * step / 20, "grad_norm": math.inf if step == 7 else 1.0 + step}
        if step % 5 == 0:
            record |= {"val_loss": 5.5 / step, "health/zero_frac": 0.3 + step / 100}
        logger.log(step, record)
    logger.log(7, {"alert": "loss is nan"})
    logger.close()


def test_plot_run_writes_the_pngs_for_keys_present(tmp_path):
    write_run(tmp_path)
    paths = plot_run(tmp_path)
    assert sorted(p.name for p in paths) == ["grad_norm.png", "loss.png", "lr.png", "zero_frac.png"]
    for p in paths:
        assert p.parent == tmp_path / "plots"
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000


def test_plot_run_custom_out_dir(tmp_path):
    write_run(tmp_path)
    paths = plot_run(tmp_path, tmp_path / "elsewhere")
    assert paths and all(p.parent == tmp_path / "elsewhere" for p in paths)


def test_missing_metrics_file(tmp_path):
    with pytest.raises(BitternError, match="metrics.jsonl"):
        plot_run(tmp_path)


@pytest.mark.parametrize("text", ['{"step": 1, "loss": 2.0}\nnot json\n', '{"loss": 2.0}\n', "[1, 2]\n"])
def test_malformed_metrics_file(tmp_path, text):
    (tmp_path / "metrics.jsonl").write_text(text)
    with pytest.raises(BitternError, match="metrics.jsonl"):
        plot_run(tmp_path)
