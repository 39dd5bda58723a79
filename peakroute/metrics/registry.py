"""Prometheus metrics of one worker or api process (prometheus-client's default registry).

Labels are bounded sets only (channel, stage, reason code, verdict): never an order id, SKU list or
anything personal, so cardinality stays flat however large the peak.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RAW_RECEIVED = Counter(
    "peakroute_raw_received_total", "Raw channel payloads read from the raw topics", ["channel"])
ORDERS_EMITTED = Counter(
    "peakroute_orders_emitted_total",
    "Canonical order states written to peakroute.orders (new order or changed state)",
    ["channel", "verdict", "status"])
RAW_FORWARDED = Counter(
    "peakroute_raw_forwarded_total",
    "Raw payloads found on a partition other than their order's (keyed otherwise or not at all) and "
    "forwarded to it; 0 when every producer keys by channel order id with Kafka's default partitioner",
    ["channel"])
DUPLICATES = Counter(
    "peakroute_duplicates_total",
    "Raw payloads that carried no news: exact re-sends (duplicate) or older states (stale)",
    ["channel", "verdict"])
DEAD_LETTERS = Counter(
    "peakroute_dead_letters_total", "Inputs written to peakroute.dlq", ["channel", "stage", "reason"])
WEBHOOK_REQUESTS = Counter(
    "peakroute_webhook_requests_total", "Webhook requests by channel and HTTP status", ["channel", "status"])
STAGE_SECONDS = Histogram(
    "peakroute_stage_seconds", "Processing time per stage, per input message", ["stage"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
EFFECTS_GATE_SECONDS = Histogram(
    "peakroute_effects_gate_seconds",
    "Time a batch's effects waited for everything sent before them (the previous batches' table writes) "
    "to be acknowledged by Kafka (agents.common.prior_writes_durable)", ["stage"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
INPUT_WAIT_SECONDS = Histogram(
    "peakroute_input_wait_seconds",
    "From an input message's Kafka timestamp to the start of the batch an agent handles it in: "
    "producer linger, broker, fetch, faust's buffers and the batch wait — a lag in time, per message "
    "(on the raw topics the timestamp is the producer's clock)", ["agent"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30,
             60))
BATCH_WAIT_SECONDS = Histogram(
    "peakroute_batch_wait_seconds",
    "From an input message reaching an agent's batch buffer to the start of its batch: the batch wait "
    "and the batch processed before it (the rest of peakroute_input_wait_seconds is the way to the "
    "buffer; PEAKROUTE_BATCHING=arrival only)", ["agent"],
    # fine around the default 10 ms wait, which most messages of an idle-ish agent wait out
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1,
             2.5, 5, 10))
BATCH_SECONDS = Histogram(
    "peakroute_batch_seconds",
    "An agent's batch, from its start until the agent asks for the next: decoding, planning, Redis, "
    "the effects gate and the flush (the wait of every message that arrived meanwhile)", ["agent"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
BATCH_SIZE = Histogram(
    "peakroute_batch_size", "Messages per batch of an agent (at most 500): batches grow as it falls behind",
    ["agent"], buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500))
INGEST_TO_CANONICAL = Histogram(
    "peakroute_ingest_to_canonical_seconds",
    "Raw topic timestamp (ingest) to canonical order emitted",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (0 = don't serve)."""
    if port:
        start_http_server(port, addr="0.0.0.0")

RESERVATIONS = Counter(
    "peakroute_reservation_replies_total",
    "SKU owners' answers: confirmed, refused, stale, shipped, evicted (oversold)", ["outcome"])
OVERSOLD_UNITS = Counter(
    "peakroute_oversold_units_total",
    "Units whose reservation was evicted because on-hand fell below what was reserved")
ORDER_EVENTS = Counter(
    "peakroute_order_events_total", "Order status changes written to peakroute.order-events", ["event"])
FULFILLMENT_REQUESTS = Counter(
    "peakroute_fulfillment_requests_total", "Shipment and cancel requests sent to warehouses",
    ["warehouse", "type"])

# Surge breaker (labels: breaker keys — channels, and SKUs only once they tripped: bounded).
BREAKER_STATE = Gauge("peakroute_breaker_state", "Breaker state: 0 closed, 1 half-open (draining), 2 open", ["key"])
BREAKER_RATE = Gauge("peakroute_breaker_rate", "Orders/s over the breaker window, all workers", ["key"])
BREAKER_BASELINE = Gauge("peakroute_breaker_baseline", "Learned baseline orders/s", ["key"])
BREAKER_DRAIN_RATE = Gauge("peakroute_breaker_drain_rate", "Orders/s released while half-open", ["key"])
HELD_ORDERS = Gauge("peakroute_held_orders", "Orders held for review by a breaker", ["key"])
BREAKER_TRIPS = Counter("peakroute_breaker_trips_total", "Times a breaker opened", ["key"])
BREAKER_DRAINED = Counter("peakroute_breaker_drained_total", "Held orders released by draining", ["key"])

# End to end and outcomes (issue 5).  Buckets span 1 ms .. 60 s: a peak's good and bad minutes.
E2E_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
INGEST_TO_ROUTED = Histogram(
    "peakroute_ingest_to_routed_seconds", "Raw topic timestamp (ingest) to shipment request sent",
    ["channel"], buckets=E2E_BUCKETS)
ORDER_TO_ROUTED = Histogram(
    "peakroute_order_to_routed_seconds", "Channel order time (paid, or created for reserve-at-order) to routed",
    ["channel"], buckets=E2E_BUCKETS + (120, 300, 600))
CANCEL_PROPAGATION = Histogram(
    "peakroute_cancel_propagation_seconds",
    "Channel cancel (its update time) to cancel request sent to the warehouse (field health metric: <= 8 min)",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 480, 900))
ORDER_OUTCOMES = Counter(
    "peakroute_order_outcomes_total", "Orders by outcome: routed, split, backordered, held, cancelled, rejected",
    ["channel", "outcome"])
ROUTED_BY_WAREHOUSE = Counter(
    "peakroute_routed_shipments_total", "Shipment requests by warehouse and channel", ["warehouse", "channel"])
RESOLUTIONS = Counter(
    "peakroute_exception_resolutions_total",
    "Orders that needed more than a plain route: resolved automatically (rerouted, split) or sent to manual review",
    ["how"])
STOCKOUTS = Gauge(
    "peakroute_stockout_backorders", "Backordered order lines per SKU (top 20 SKUs of this worker only)", ["sku"])
CONSUMER_LAG = Gauge(
    "peakroute_consumer_lag_messages", "Messages not yet read, per topic and partition assigned here",
    ["topic", "partition"])
TABLE_KEYS = Gauge("peakroute_table_keys", "Keys held locally per table (RocksDB: its estimate, for the active partitions)", ["table"])
OVERSOLD_ORDERS = Counter(
    "peakroute_oversold_orders_total", "Order lines whose reservation was evicted (then re-routed or backordered)")
SHORT_PICKS = Counter("peakroute_short_picked_units_total", "Units the WMS reported missing at picking (short picks)")
CHANGELOG_LATE_RECORDS = Counter(
    "peakroute_changelog_late_records_total",
    "Table changelog records left out when a partition was recovered: written by an owner the "
    "partition had already moved from (a frozen worker's queued writes, sent when it woke; "
    "tables/stale.py); each one is a zombie write that recovery did not take",
    ["table"])
CHANGELOG_REPAIRS = Counter(
    "peakroute_changelog_repairs_total",
    "Table keys a partition's owner wrote to its changelog again after a replaced owner's late write "
    "of them (one recovery left out, or one that arrived later), so that log compaction keeps the "
    "owner's value (tables/repair.py)",
    ["table"])
STOCK_OPS_LATE = Counter(
    "peakroute_stock_ops_late_total",
    "Stock operations a SKU owner left out: sent by an order owner the order partition had already "
    "moved from and delivered after the new owner's (a frozen worker's queued requests; tables/stale.py)")
SHIPMENTS_UNMATCHED = Counter(
    "peakroute_shipments_unmatched_total",
    "WMS shipment confirmations that match no reservation of the SKU they name (a wrong SKU, a line "
    "released before it was confirmed, or a confirmation repeated over 10 minutes after the first): "
    "nothing is shipped")
RESERVED_REDERIVED = Counter(
    "peakroute_reserved_rederived_total",
    "Stock levels whose reserved count was corrected from their hold records after a restart or rebalance")
STALE_EVENTS = Counter(
    "peakroute_stale_events_dropped_total",
    "Messages an agent set aside unprocessed (handed over during a rebalance, or of a partition assigned "
    "elsewhere): read again after the rebalance's seek",
    ["stage"])
RESERVATION_RETRIES = Counter(
    "peakroute_reservation_retries_total", "Reservations asked again after waiting too long for an answer")
OFFSET_REWINDS = Counter(
    "peakroute_offset_rewinds_total",
    "Input partitions rewound after the consumer skipped offsets (faust-streaming bug, fixed by rewinding)",
    ["topic"])
INPUT_GAPS = Counter(
    "peakroute_input_gaps_total",
    "Input records that reached an agent past an earlier record it had not acted on (lost between Kafka "
    "and the agent): set aside and the partition rewound, so records are acted on in order",
    ["topic"])
TABLE_RESTORE_RECORDS = Counter(
    "peakroute_table_restore_records_total",
    "Changelog records a worker read into its tables in bulk when it was assigned their partitions "
    "(tables/restore.py; faust's recovery reads only what remains)", ["table"])
TABLE_RESTORE_SECONDS = Counter(
    "peakroute_table_restore_seconds_total",
    "Time spent restoring tables in bulk (the rebalance waits for it): with the records counter, "
    "records per second", ["table"])
RECOVERY_REREADS = Counter(
    "peakroute_recovery_rereads_total",
    "Changelog partitions read again because a table recovery received nothing while the consumer had "
    "fetched past it (records dropped before they reached faust's recovery)")
OFFSET_HOLES = Counter(
    "peakroute_offset_holes_total",
    "Offsets missing from an input topic even after rewinding (retention or trimming removed unread records)",
    ["topic"])


def _memoize_labels(metric: Counter | Histogram) -> None:
    """Give ``metric.labels`` a cache of its children.

    prometheus-client validates the label values and takes a lock on every ``labels()`` call; the
    agents call it several times per order (~3% of a worker's event loop, measured).  Counters
    and histograms here are never ``remove()``d, so a child, once made, stays the right one."""
    children: dict[tuple[str, ...], object] = {}
    make = metric.labels

    def labels(*values: str) -> object:
        child = children.get(values)
        if child is None:
            child = children[values] = make(*values)
        return child

    metric.labels = labels  # type: ignore[method-assign]


for _metric in list(globals().values()):
    if isinstance(_metric, (Counter, Histogram)) and _metric._labelnames:
        _memoize_labels(_metric)
