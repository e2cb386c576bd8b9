"""Observability: metric sinks (JSONL, TensorBoard), ternary health, alerts, throughput, plots."""

from bittern.monitor.alerts import Alerts, report
from bittern.monitor.health import TernaryHealth, log_weight_histograms, unwrap
from bittern.monitor.metrics import MetricsLogger, current_records, read_metrics, truncate_metrics
from bittern.monitor.perf import memory_stats, mfu, peak_flops, reset_peak
from bittern.monitor.plot import plot_run

__all__ = [
    "Alerts",
    "MetricsLogger",
    "TernaryHealth",
    "current_records",
    "log_weight_histograms",
    "memory_stats",
    "mfu",
    "peak_flops",
    "plot_run",
    "read_metrics",
    "report",
    "reset_peak",
    "truncate_metrics",
    "unwrap",
]
