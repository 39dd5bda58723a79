"""The stream pipeline, declared in one place.

    peakroute.raw.{tmall,jd,douyin,wxmini} ──normalize──▶ peakroute.orders   (canonical, key order_id)
                                              └─────────▶ peakroute.dlq      (rejections, with bytes)
    table order-versions (order_id → last emitted state), co-partitioned with the raw topics

Later stages (reservation, routing, breaker) hang off ``peakroute.orders``.
"""

from __future__ import annotations

import faust

from ..agents import normalize
from ..config import Settings
from ..domain.catalog import load_catalog
from . import codecs  # noqa: F401 - registers the orjson codec
from .topics import DLQ, ORDERS, RAW_TOPICS


def broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{hp.strip()}" for hp in bootstrap.split(",") if hp.strip()]


def build_app(settings: Settings) -> faust.App:
    """A faust app with every topic, table and agent of the pipeline."""
    app = faust.App(
        settings.app_id,
        broker=broker_urls(settings.kafka_bootstrap),
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        producer_acks=-1,
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
    )
    n = settings.partitions
    raw = app.topic(*RAW_TOPICS, key_type=bytes, value_type=bytes, partitions=n)
    orders = app.topic(ORDERS, key_type=bytes, value_type=bytes, partitions=n)
    dlq = app.topic(DLQ, key_type=bytes, value_type=bytes, partitions=n)
    json_schema = faust.Schema(key_serializer="orjson", value_serializer="orjson")
    versions = app.Table("order-versions", default=None, partitions=n, schema=json_schema,
                         help="order_id -> last emitted canonical state (dedup)")
    normalize.register(app, raw=raw, orders=orders, dlq=dlq, versions=versions,
                       catalog=load_catalog(settings.catalog_file or None))
    return app
