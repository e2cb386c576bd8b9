"""Observability: metric sinks (JSONL, TensorBoard)."""

from bittern.monitor.metrics import MetricsLogger, read_metrics, truncate_metrics

__all__ = ["MetricsLogger", "read_metrics", "truncate_metrics"]
