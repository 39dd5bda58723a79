"""Builds the Grafana dashboards (JSON, provisioned by docker-compose) from one readable list of panels.

    python deploy/grafana/build_dashboards.py        # rewrites deploy/grafana/dashboards/*.json

Every panel's query is also checked against a real Prometheus scraping a worker under load
(tests/integration/test_observability.py), so a dashboard cannot silently show "No data".
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).parent / "dashboards"

# (dashboard uid, title, [(panel title, PromQL, unit, kind)])
DASHBOARDS: list[tuple[str, str, list[tuple[str, str, str, str]]]] = [
    ("peakroute-overview", "PeakRoute — peak overview", [
        ("Orders/s by channel", "sum by (channel) (rate(peakroute_raw_received_total[1m]))", "ops", "timeseries"),
        ("Ingest → routed p50", "histogram_quantile(0.5, sum by (le) (rate(peakroute_ingest_to_routed_seconds_bucket[5m])))", "s", "timeseries"),
        ("Ingest → routed p99", "histogram_quantile(0.99, sum by (le) (rate(peakroute_ingest_to_routed_seconds_bucket[5m])))", "s", "timeseries"),
        ("Oversold units (independent reconciler, must be 0)", "max(peakroute_reconciler_oversold_units)", "none", "stat"),
        ("Reservation invariant violations (must be 0)", "max(peakroute_reconciler_invariant_violations)", "none", "stat"),
        ("Oversold units evicted by inventory corrections", "sum(increase(peakroute_oversold_units_total[1h]))", "none", "stat"),
        ("Breaker state (0 closed, 1 draining, 2 open)", "max by (key) (peakroute_breaker_state)", "none", "timeseries"),
        ("Orders held for review", "sum by (key) (peakroute_held_orders)", "none", "timeseries"),
        ("Consumer lag", "sum by (topic) (peakroute_consumer_lag_messages)", "none", "timeseries"),
        ("Dead letters/s by reason", "sum by (reason) (rate(peakroute_dead_letters_total[5m]))", "ops", "timeseries"),
        ("Workers up", "sum(up{job=\"peakroute-worker\"})", "none", "stat"),
    ]),
    ("peakroute-funnel", "PeakRoute — channel funnel", [
        ("Received", "sum by (channel) (rate(peakroute_raw_received_total[5m]))", "ops", "timeseries"),
        ("Valid (canonical states emitted)", "sum by (channel) (rate(peakroute_orders_emitted_total[5m]))", "ops", "timeseries"),
        ("Duplicates / stale dropped", "sum by (channel) (rate(peakroute_duplicates_total[5m]))", "ops", "timeseries"),
        ("Routed", "sum by (channel) (rate(peakroute_order_outcomes_total{outcome=~\"routed|split\"}[5m]))", "ops", "timeseries"),
        ("Backordered", "sum by (channel) (rate(peakroute_order_outcomes_total{outcome=\"backordered\"}[5m]))", "ops", "timeseries"),
        ("Held / cancelled / rejected", "sum by (channel, outcome) (rate(peakroute_order_outcomes_total{outcome=~\"held|cancelled|rejected\"}[5m]))", "ops", "timeseries"),
        ("Shipped (WMS confirmed)", "sum(rate(peakroute_reservation_replies_total{outcome=\"shipped\"}[5m]))", "ops", "timeseries"),
        ("Order time → routed p99", "histogram_quantile(0.99, sum by (le, channel) (rate(peakroute_order_to_routed_seconds_bucket[5m])))", "s", "timeseries"),
        ("Cancel propagation p99 (≤ 8 min)", "histogram_quantile(0.99, sum by (le) (rate(peakroute_cancel_propagation_seconds_bucket[15m])))", "s", "timeseries"),
        ("Automatic vs manual resolution", "sum by (how) (rate(peakroute_exception_resolutions_total[15m]))", "ops", "timeseries"),
    ]),
    ("peakroute-warehouses", "PeakRoute — warehouse load", [
        ("Shipment requests/s by warehouse", "sum by (warehouse) (rate(peakroute_routed_shipments_total[5m]))", "ops", "timeseries"),
        ("Shipments today by warehouse", "sum by (warehouse) (increase(peakroute_routed_shipments_total[24h]))", "none", "bargauge"),
        ("Cancel requests/s by warehouse", "sum by (warehouse) (rate(peakroute_fulfillment_requests_total{type=\"cancel_request\"}[5m]))", "ops", "timeseries"),
        ("Per-stage processing time p99", "histogram_quantile(0.99, sum by (le, stage) (rate(peakroute_stage_seconds_bucket[5m])))", "s", "timeseries"),
        ("Effects waiting for the previous writes' acks, p99", "histogram_quantile(0.99, sum by (le, stage) (rate(peakroute_effects_gate_seconds_bucket[5m])))", "s", "timeseries"),
        ("Input messages: Kafka timestamp → batch start, p99 (lag in time)", "histogram_quantile(0.99, sum by (le, agent) (rate(peakroute_input_wait_seconds_bucket[5m])))", "s", "timeseries"),
        ("…of which in the batch buffer, p99", "histogram_quantile(0.99, sum by (le, agent) (rate(peakroute_batch_wait_seconds_bucket[5m])))", "s", "timeseries"),
        ("Batch time p99 by agent (longer as a worker falls behind)", "histogram_quantile(0.99, sum by (le, agent) (rate(peakroute_batch_seconds_bucket[5m])))", "s", "timeseries"),
        ("Messages per batch by agent (mean)", "sum by (agent) (rate(peakroute_batch_size_sum[5m])) / sum by (agent) (rate(peakroute_batch_size_count[5m]))", "none", "timeseries"),
    ]),
    ("peakroute-inventory", "PeakRoute — inventory hot spots", [
        ("Top stock-outs (backordered lines by SKU)", "topk(10, max by (sku) (peakroute_stockout_backorders))", "none", "bargauge"),
        ("Reservation answers/s", "sum by (outcome) (rate(peakroute_reservation_replies_total[5m]))", "ops", "timeseries"),
        ("Units promised (reconciler)", "max(peakroute_reconciler_promised_units)", "none", "stat"),
        ("Local table keys", "sum by (table) (peakroute_table_keys)", "none", "timeseries"),
        ("WMS confirmations matching no reservation (1h)", "sum(increase(peakroute_shipments_unmatched_total[1h]))", "none", "stat"),
        ("Zombie writes left out (1h: late changelog records, late stock requests)", "(sum(increase(peakroute_changelog_late_records_total[1h])) or vector(0)) + sum(increase(peakroute_stock_ops_late_total[1h]))", "none", "stat"),
        ("Late-written keys written again by their owner (1h; so compaction keeps the owner's value)", "sum(increase(peakroute_changelog_repairs_total[1h])) or vector(0)", "none", "stat"),
    ]),
]


def panel(i: int, title: str, expr: str, unit: str, kind: str) -> dict:
    return {
        "id": i + 1, "type": kind, "title": title,
        "datasource": {"type": "prometheus", "uid": "prometheus"},
        "gridPos": {"h": 8, "w": 12 if kind == "timeseries" else 6, "x": (i % 2) * 12, "y": (i // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": "A", "expr": expr, "datasource": {"type": "prometheus", "uid": "prometheus"}}],
    }


def dashboard(uid: str, title: str, panels: list[tuple[str, str, str, str]]) -> dict:
    return {"uid": uid, "title": title, "tags": ["peakroute"], "timezone": "browser", "schemaVersion": 39,
            "refresh": "5s", "time": {"from": "now-30m", "to": "now"},
            "panels": [panel(i, *p) for i, p in enumerate(panels)]}


def all_queries() -> list[tuple[str, str, str]]:
    return [(uid, title, expr) for uid, _, panels in DASHBOARDS for title, expr, _, _ in panels]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for uid, title, panels in DASHBOARDS:
        (OUT / f"{uid}.json").write_text(json.dumps(dashboard(uid, title, panels), ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    main()
