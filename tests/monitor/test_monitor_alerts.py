"""Alert rules, and where a fired alert lands: stderr (above a progress bar), JSONL, TensorBoard."""

import math
import random
import sys

from tqdm.auto import tqdm

from bittern.monitor import Alerts, MetricsLogger, read_metrics, report


def healthy_norms(scale: float = 1.0, steps: int = 200) -> list[float]:
    """Gradient norms of a healthy run: large at first, falling to a noisy plateau (x scale)."""
    rng = random.Random(0)
    return [scale * (0.5 + 40.0 / (1 + s) ** 1.5) * rng.uniform(0.7, 1.4) for s in range(steps)]


def fired(alerts: Alerts, norms: list[float]) -> list[int]:
    return [step for step, norm in enumerate(norms, 1) if alerts.check(step, 2.0, norm)]


def test_loss_nan_and_inf_alert():
    alerts = Alerts()
    assert alerts.check(1, 2.5, 1.0) == []
    assert len(alerts.check(2, math.nan, 1.0)) == 1
    assert "inf" in alerts.check(3, math.inf, 1.0)[0]
    assert Alerts(loss_nan=False).check(4, math.nan, 1.0) == []


def test_absolute_grad_norm_threshold_is_opt_in():
    alerts = Alerts(grad_norm_threshold=10.0, grad_norm_spike=None)
    assert alerts.check(1, 1.0, 9.0) == []
    (message,) = alerts.check(2, 1.0, 11.0)
    assert "grad norm" in message and "11" in message
    assert len(alerts.check(3, 1.0, math.nan)) == 1
    assert Alerts(grad_norm_threshold=None, grad_norm_spike=None).check(4, 1.0, 1e9) == []
    assert alerts.history == [(2, message), (3, "grad norm is nan")]


def test_a_healthy_run_raises_no_alert_at_any_scale():
    norms = healthy_norms()
    assert max(norms[:5]) > 10  # the first steps are above the old fixed threshold of 10
    for scale in (1e-3, 1.0, 1e3):
        assert fired(Alerts(), healthy_norms(scale)) == []


# The pre-clip gradient norms of the built-in job's first 80 steps (configs/shakespeare-tiny.toml,
# measured on a 2-core CPU): a healthy run whose LR warms up over 60 steps.
BUILT_IN_JOB = [
    17.178, 12.744, 9.139, 6.351, 4.148, 3.388, 2.661, 2.65, 2.551, 2.441, 2.438, 2.365, 2.308, 2.244,
    2.208, 2.244, 2.139, 2.807, 11.421, 5.119, 13.056, 4.437, 2.719, 2.254, 1.911, 3.596, 2.113, 4.995,
    4.114, 2.746, 3.225, 2.611, 1.961, 1.11, 8.976, 2.217, 1.177, 8.645, 3.136, 4.719, 1.149, 1.395,
    2.285, 1.379, 3.013, 1.692, 1.459, 1.34, 0.89, 1.909, 1.393, 1.433, 1.144, 1.629, 2.129, 1.629,
    1.829, 1.236, 2.109, 1.909, 1.323, 1.268, 1.734, 1.011, 1.256, 1.607, 1.142, 1.334, 1.37, 2.385,
    1.648, 1.183, 1.502, 1.327, 1.666, 1.285, 0.959, 0.985, 1.039, 1.143,
]  # fmt: skip


def test_the_built_in_job_raises_no_alert():
    assert fired(Alerts(grad_norm_threshold=10.0, grad_norm_spike=None), BUILT_IN_JOB) == [1, 2, 19, 21]
    assert fired(Alerts(quiet_until=60), BUILT_IN_JOB) == []  # the trainer's rule: after the warmup
    spiked = [*BUILT_IN_JOB, 8.0]  # then a spike of 6x the recent median
    assert fired(Alerts(quiet_until=60), spiked) == [81]


def test_no_spike_alert_during_the_warmup():
    norms = [1.0] * 30 + [100.0]
    assert fired(Alerts(quiet_until=31), norms) == []
    assert fired(Alerts(quiet_until=30), norms) == [31]


def test_a_spike_relative_to_the_run_alerts_at_any_scale():
    for scale in (1e-3, 1.0, 1e3):
        norms = healthy_norms(scale)
        norms[150] = 8 * norms[149]
        alerts = Alerts()
        assert fired(alerts, norms) == [151]
        (message,) = [m for _, m in alerts.history]
        assert "x the median" in message and "last 50 steps" in message


def test_no_spike_alert_before_the_run_has_a_history():
    norms = [1.0] * 19 + [100.0]  # the 20th norm: only 19 known before it
    assert fired(Alerts(), norms) == []
    assert fired(Alerts(), [1.0] * 20 + [100.0]) == [21]
    assert "grad norm is nan" in Alerts().check(1, 1.0, math.nan)  # non-finite alerts at once


def test_report_prints_above_the_progress_bar_and_records(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = MetricsLogger(tmp_path, tensorboard=True)
    messages = Alerts(grad_norm_threshold=10.0).check(5, math.nan, 11.0)
    bar = tqdm(total=10, desc="train", file=sys.stderr, mininterval=0)
    bar.update(3)
    report(5, messages, logger)
    bar.close()
    logger.close()
    err = capsys.readouterr().err
    # tqdm.write clears the bar's line first: each alert is a line of its own, not appended to the bar
    alerts = [line.split("\r")[-1] for line in err.split("\n") if "ALERT" in line]
    assert alerts == [f"bittern: ALERT step 5: {m}" for m in messages] and len(alerts) == 2
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records == [{"step": 5, "alert": m} for m in messages]
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    texts = acc.Tensors("alerts/text_summary")
    assert [t.step for t in texts] == [5, 5]
    assert [t.tensor_proto.string_val[0].decode() for t in texts] == messages
