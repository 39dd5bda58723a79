"""faust's Prometheus monitor without its per-message bookkeeping.

Why: faust calls its monitor several times for every Kafka message and every table read or write
(message in, stream event in and out, message out, table get/set, the partition's end offset),
each call doing Python bookkeeping plus a ``labels(...)`` lookup.  A py-spy profile of a worker
draining a backlog put that at about 12% of the worker's main thread (2026-11-27,
``benchmarks/RESULTS.md``) — for counters no dashboard or alert reads.  This monitor keeps what
is cheap and used: read and end offsets per partition (``peakroute_consumer_lag_messages`` is
computed from them), commit latency and committed offsets, rebalances, assignments and send
errors.  faust's per-message and per-table-operation series (``faust_messages_received`` …) are
registered but stay at zero; PeakRoute's own ``peakroute_*`` counters count the business events.
"""

from __future__ import annotations

from typing import Any

from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import REGISTRY


class LeanFaustMonitor(PrometheusMonitor):
    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        self.tp_read_offsets[tp] = offset

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> dict | None:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: dict | None = None) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_table_get(self, table: Any, key: Any) -> None:
        return None

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        return None

    def on_table_del(self, table: Any, key: Any) -> None:
        return None

    def track_tp_end_offset(self, tp: Any, offset: int) -> None:
        self.tp_end_offsets[tp] = offset


_METRICS: dict[str, Any] = {}  # name prefix -> FaustMetrics: a registry takes each series once per process


def install(app: Any, name_prefix: str = "faust") -> LeanFaustMonitor:
    """faust's metrics on the process's default registry (served on our /metrics), fed lean.
    A second app in the same process (tests, tools) shares the first one's series."""
    if name_prefix not in _METRICS:
        _METRICS[name_prefix] = FaustMetrics.create(REGISTRY, name_prefix)
    monitor = LeanFaustMonitor(metrics=_METRICS[name_prefix])
    app.monitor = monitor
    return monitor
