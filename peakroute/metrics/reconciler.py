"""``peakroute reconcile``: the independent oversell watchdog.

Reads ``peakroute.inventory`` and every ``peakroute.fulfillment.<warehouse>`` topic from the
beginning — what the WMS said about stock and what the warehouses were promised — and exports, per
second, how many units are promised beyond on-hand minus safety stock.  It never reads the router's
tables or counters, so a router bug cannot hide from it.  Alert rules page on any non-zero value.
"""

from __future__ import annotations

import logging
import signal
import time
import uuid

import orjson
from confluent_kafka import Consumer
from prometheus_client import Gauge

from ..config import Settings
from ..domain.network import load_network
from ..domain.reconcile import OversellLedger
from ..streams.topics import INVENTORY, fulfillment_topic
from .registry import serve

log = logging.getLogger("peakroute.reconcile")

OVERSOLD_UNITS = Gauge("peakroute_reconciler_oversold_units",
                       "Units promised to warehouses beyond on-hand minus safety stock (must be 0)")
VIOLATIONS = Gauge("peakroute_reconciler_invariant_violations",
                   "(SKU, warehouse) pairs where promised > on-hand - safety (must be 0)")
PROMISED = Gauge("peakroute_reconciler_promised_units", "Units in live shipment requests")
LIVE = Gauge("peakroute_reconciler_live_shipments", "Shipment requests not cancelled")
READ = Gauge("peakroute_reconciler_messages_read", "Messages the reconciler has read", ["topic"])


def run_reconciler(settings: Settings, metrics_port: int, stop_after_s: float | None = None) -> None:
    serve(metrics_port)
    topics = [INVENTORY, *(fulfillment_topic(w.code) for w in load_network(settings.network_file or None).warehouses)]
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"peakroute-reconcile-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(topics)
    ledger = OversellLedger()
    counts = {t: 0 for t in topics}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = last = time.monotonic()
    log.info("reconciler reading %s", ", ".join(topics))
    try:
        while not stopping and (stop_after_s is None or time.monotonic() - started < stop_after_s):
            for msg in consumer.consume(1000, 0.5):
                if msg.error() or not msg.value():
                    continue
                try:
                    doc = orjson.loads(msg.value())
                except orjson.JSONDecodeError:
                    continue  # the router dead-letters bad inventory; here it simply does not count
                if not isinstance(doc, dict):
                    continue
                counts[msg.topic()] += 1
                try:
                    if msg.topic() == INVENTORY:
                        ledger.inventory(doc)
                    else:
                        ledger.request(doc)
                except (KeyError, TypeError, ValueError):
                    continue
            if time.monotonic() - last >= 1.0:
                last = time.monotonic()
                report = ledger.report()
                OVERSOLD_UNITS.set(sum(p - s for _, _, p, s in report.violations))
                VIOLATIONS.set(len(report.violations))
                PROMISED.set(sum(report.promised.values()))
                LIVE.set(report.live_shipments)
                for t, n in counts.items():
                    READ.labels(t).set(n)
    finally:
        consumer.close()
