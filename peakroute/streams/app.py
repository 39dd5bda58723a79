"""The stream pipeline, declared in one place.

    peakroute.raw.{tmall,jd,douyin,wxmini}
        │ fulfillment   (table order-routing, by order on its raw partition:
        │                normalize → drop re-sends → surge breaker → plan → reserve → route / compensate)
        ├──▶ peakroute.dlq       rejections, with the original bytes
        ├──▶ peakroute.orders    every accepted canonical order (an output: nothing reads it back)
        │   └─▶ peakroute.review   orders held by an open breaker (released at the drain rate or by an operator)
        │   ▲  reservation replies, batched per order partition
        ▼   │
    peakroute.internal.stock-ops  ◀── inventory ◀── peakroute.inventory (WMS: snapshots, deltas, shipments)
        │ stock         (tables stock-levels, stock-holds, by SKU: the only place a unit is promised)
        └──▶ peakroute.internal.stock-replies
    fulfillment ──▶ peakroute.fulfillment.<warehouse>   shipment / cancel requests for the WMS
                └─▶ peakroute.order-events   (and the same events projected into Redis ──▶ GET /orders/{id})

Every stream topic has the same partition count, so faust co-partitions each table with its inputs.
"""

from __future__ import annotations

import time
from typing import Any

import faust

from ..agents import breaker, common, fulfillment, inventory, stock
from ..config import Settings
from ..domain.catalog import load_catalog
from ..domain.fulfillment import Watchlist
from ..domain.network import load_network
from ..tables import clean_stop, repair
from ..tables.breaker_store import BreakerStore
from ..tables.packed import PackedTable
from ..tables.redis_views import RedisViews
from . import codecs  # noqa: F401 - registers the orjson codec
from .batching import check_mode
from .outbox import Outbox, carry_changelogs
from .topics import DLQ, INVENTORY, RAW_TOPICS, STOCK_OPS, STOCK_REPLIES, TABLES


def broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{hp.strip()}" for hp in bootstrap.split(",") if hp.strip()]


def faust_datadir(settings: Settings) -> str:
    """faust's data directory (its bookkeeping; the tables too with PEAKROUTE_TABLE_STORE=rocksdb):
    under the state dir, not ``<app_id>-data`` in whatever directory the worker was started from."""
    from pathlib import Path

    path = Path(settings.state_dir).expanduser() / "faust" / f"{settings.app_id}-data"
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


def build_app(settings: Settings) -> faust.App:
    """A faust app with every topic, table and agent of the pipeline."""
    store_kwargs: dict[str, Any] = {"store": "memory://"}
    table_options: dict[str, Any] | None = None
    if settings.table_store == "rocksdb":
        from pathlib import Path

        from ..tables import store as rocks

        rocks.register()
        rocks.BoundedOptions.budget_mb = settings.table_memory_mb
        if settings.table_restore not in ("bulk", "faust"):
            raise ValueError(f"PEAKROUTE_TABLE_RESTORE must be bulk or faust, not {settings.table_restore!r}")
        rocks.Store.restore_bootstrap = settings.kafka_bootstrap if settings.table_restore == "bulk" else None
        rocks.Store.restore_max_s = settings.table_restore_max_s
        if settings.table_keep not in ("clean-stop", "never"):
            raise ValueError(f"PEAKROUTE_TABLE_KEEP must be clean-stop or never, not {settings.table_keep!r}")
        tabledir = rocks.worker_tabledir(Path(faust_datadir(settings)) / "tables", settings.app_id,
                                         settings.partitions, settings.kafka_bootstrap,
                                         keep=settings.table_keep == "clean-stop")
        store_kwargs = {"store": rocks.STORE_URL, "tabledir": str(tabledir)}
        table_options = rocks.ROCKSDB_OPTIONS
    elif settings.table_store != "memory":
        raise ValueError(f"PEAKROUTE_TABLE_STORE must be rocksdb or memory, not {settings.table_store!r}")
    app = faust.App(
        settings.app_id,
        broker=broker_urls(settings.kafka_bootstrap),
        datadir=faust_datadir(settings),
        **store_kwargs,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        # Failure detection: a worker silent for session_timeout_s loses its partitions (faust's
        # default is 60 s; the request timeout must not be shorter than the session timeout).
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        broker_request_timeout=max(90.0, settings.session_timeout_s),
        producer_acks=-1,
        # Fewer, fatter produce requests: aiokafka keeps one request in flight per broker, so a
        # few ms of linger turn hundreds of tiny requests into one (measured: see benchmarks/).
        producer_linger_ms=5,
        producer_max_batch_size=512 * 1024,
        stream_buffer_maxsize=16384,
        # No standby copies of the tables: a takeover always recovers the partitions it gets from
        # their changelogs.  In the long form of the SIGSTOP fault test (three freezes in a row) a
        # worker started 20 s earlier took over its peer's partitions from its standby copies, and
        # faust reported them recovered while their hold and order-state records were mostly
        # missing: reserved re-derived 118 -> 10, 229 units oversold and 25 lines shipped twice.
        # With standbys off the same test audits clean (tests/evidence/2026-11-27-long-zombie).
        # The cost is a longer takeover (the changelog is read from the start, not caught up).
        table_standby_replicas=0,
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
    )
    # faust's own monitor (commits, rebalances, offsets per partition) on the same /metrics as
    # ours, without its per-message bookkeeping (metrics/faust_monitor.py).
    from ..metrics import faust_monitor

    faust_monitor.install(app)
    from ..tables import recovery

    recovery.install()  # faust's recovery loop, a group of records per wake-up
    recovery.offsets_on_own_connection(settings.kafka_bootstrap)  # its offset queries not behind a fetch
    if settings.table_store == "rocksdb":
        recovery.raw_changelog_channels(app)  # the store writes the records' bytes: no decoding
    n = settings.partitions
    catalog = load_catalog(settings.catalog_file or None)
    network = load_network(settings.network_file or None)
    views = RedisViews(settings.redis_url)
    breakers = BreakerStore(settings.redis_url, settings.partitions)
    breaker_cfg = settings.breaker_config()
    # Each batch's outgoing messages, and the tables' changelog records, go through librdkafka: one
    # producer per agent that keeps tables, so that an agent's effects wait (prior_writes_durable)
    # for its own earlier writes only, not for the other agent's sends in flight (measured:
    # benchmarks/RESULTS.md, "effects gate").
    order_outbox = Outbox(settings.kafka_bootstrap, **{"client.id": "peakroute-worker-orders"})
    stock_outbox = Outbox(settings.kafka_bootstrap, **{"client.id": "peakroute-worker-stock"})
    tables: list[Any] = []

    def topic(*names: str) -> faust.TopicT:
        return app.topic(*names, key_type=bytes, value_type=bytes, partitions=n)

    def table(name: str, help: str, packed: bool = False) -> Any:
        """``packed``: values kept as JSON bytes (tables/packed.py) — for the per-order
        tables, which grow with the day's orders."""
        assert name in TABLES, "declare every table in topics.TABLES (its changelog is created up front)"
        schema = faust.Schema(key_serializer="orjson", value_serializer="orjson")
        # faust picks a table's serializers from its key/value *types* (json unless bytes), not
        # from the schema: value_type=bytes is what makes the packed tables' values raw bytes.
        t = app.Table(name, default=None, partitions=n, schema=schema, value_type=bytes if packed else None,
                      help=help, options=dict(table_options) if table_options else None)
        tables.append(t)
        return PackedTable(t) if packed else t

    wait_s = settings.batch_wait_ms / 1000
    internal_wait_s = settings.internal_batch_wait_ms / 1000
    check_mode(settings.batching)  # a typo stops the worker here, not inside an agent
    dlq = topic(DLQ)
    stock_ops, stock_replies = topic(STOCK_OPS), topic(STOCK_REPLIES)

    # One record per order: its routing state and the last canonical version emitted for it (dedup),
    # on the partition of its raw payloads.
    order_state = table("order-routing", "order_id -> routing state + last emitted version", packed=True)
    # In-flight orders the timers watch (rebuilt by one scan of order-state after each rebalance).
    watch = Watchlist()

    async def watch_stale(*_args: object, **_kwargs: object) -> None:
        watch.mark_stale(time.monotonic())

    app.on_partitions_assigned.connect(watch_stale, weak=False)
    fulfillment.register(app, raws_and_replies=topic(*RAW_TOPICS, STOCK_REPLIES), replies=stock_replies, dlq=dlq,
                         state_table=order_state, network=network, catalog=catalog, views=views,
                         breakers=breakers, breaker_cfg=breaker_cfg, partitions=n, outbox=order_outbox, watch=watch,
                         batch_wait_s=wait_s, batching=settings.batching,
                         internal_waits={STOCK_REPLIES: internal_wait_s})
    breaker.register(app, replies=stock_replies, state_table=order_state, store=breakers, cfg=breaker_cfg,
                     watch=watch, stock_ops_topic=STOCK_OPS)
    order_tables = list(tables)
    levels = table("stock-levels", "sku|warehouse -> [on_hand, reserved, safety]")
    stock.register(app, stock_ops=stock_ops, replies=stock_replies, dlq=dlq, views=views, levels=levels,
                   holds=table("stock-holds", "order_id|line_id -> reservation"), outbox=stock_outbox,
                   batch_wait_s=internal_wait_s, batching=settings.batching)
    carry_changelogs(app, order_outbox, order_tables)
    carry_changelogs(app, stock_outbox, tables[len(order_tables):])
    repair.install(app, tables, settings.kafka_bootstrap)  # a late write never the last of its key
    if settings.table_store == "rocksdb" and settings.table_keep == "clean-stop":
        clean_stop.install(app, tables, [order_outbox, stock_outbox], settings.kafka_bootstrap)  # restarts read less
    common.install_guards(app, settings)  # poison-pill retry counts, zombie fencing (agents/common.py)
    common.install_stock_view_repair(app, levels=levels, views=views, stock_ops_topic=STOCK_OPS, partitions=n)
    inventory.register(app, inventory=topic(INVENTORY), stock_ops=stock_ops, dlq=dlq, catalog=catalog,
                       warehouses={w.code for w in network.warehouses}, partitions=n)
    return app
