"""confluent-kafka clients configured one way for every connector (webhook, replay, simulator)."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, Producer

from ..config import Settings


def make_producer(settings: Settings, **overrides: Any) -> Producer:
    """An idempotent, acks=all producer: an order the channel was told we accepted is on disk.

    ``enable.idempotence`` keeps retries from writing a payload twice or out of order.  Keys are
    placed with murmur2, Kafka's default (the Java client's): a raw payload keyed by its channel
    order id lands on the partition that owns the order (``agents.common.order_partition``),
    whichever client wrote it.
    """
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "client.id": "peakroute",
    }
    conf.update(overrides)
    return Producer(conf)


def make_consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    conf.update(overrides)
    return Consumer(conf)
