"""Alert rules, and where a fired alert lands: stderr, metrics.jsonl, TensorBoard text."""

import math

from bittern.monitor import Alerts, MetricsLogger, read_metrics, report


def test_loss_nan_and_inf_alert():
    alerts = Alerts()
    assert alerts.check(1, 2.5, 1.0) == []
    assert len(alerts.check(2, math.nan, 1.0)) == 1
    assert "inf" in alerts.check(3, math.inf, 1.0)[0]
    assert Alerts(loss_nan=False).check(4, math.nan, 1.0) == []


def test_grad_norm_threshold():
    alerts = Alerts(grad_norm_threshold=10.0)
    assert alerts.check(1, 1.0, 9.0) == []
    (message,) = alerts.check(2, 1.0, 11.0)
    assert "grad norm" in message and "11" in message
    assert len(alerts.check(3, 1.0, math.nan)) == 1
    assert Alerts(grad_norm_threshold=None).check(4, 1.0, 1e9) == []
    assert alerts.history == [(2, message), (3, "grad norm is nan")]


def test_report_prints_and_records(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = MetricsLogger(tmp_path, tensorboard=True)
    messages = Alerts().check(5, math.nan, 11.0)
    report(5, messages, logger)
    logger.close()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("bittern: ALERT step 5: ") for line in err)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records == [{"step": 5, "alert": m} for m in messages]
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    texts = acc.Tensors("alerts/text_summary")
    assert [t.step for t in texts] == [5, 5]
    assert [t.tensor_proto.string_val[0].decode() for t in texts] == messages
