"""The worker's fast lane to Kafka: the messages each batch emits (canonical orders, reservation
requests and replies, shipment requests, order events, review records), produced by librdkafka.

Why not faust's own producer: faust's cost is per message, and its send path (Topic.send → aiokafka
→ Python produce-request building) was the largest item of a worker's profile — about 50–100 µs of
Python per message.  ``confluent_kafka.Producer.produce`` hands the record to librdkafka's C threads
in a few µs.  The tables' changelog records take the same lane (:func:`carry_changelogs`); faust's
own producer is left with almost nothing to send.

The crash rule of the agents is unchanged: a batch's messages must be acknowledged by Kafka before
its tables remember them (see ``agents.common.acked``).  So a batch calls :meth:`Outbox.send` for
each message, then ``await outbox.flushed()``, which returns once everything produced so far is
acknowledged (acks=all, idempotent), and raises if anything could not be delivered.

Keyed records use the murmur2 partitioner — the Java client's and faust/aiokafka's — so a key goes
to the same partition whichever producer wrote it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, Producer

from ..tables.stale import GENERATION_HEADER


class OutboxError(Exception):
    """Kafka did not take a record; the batch's effects are not durable."""


class Outbox:
    def __init__(self, bootstrap: str, **overrides: Any) -> None:
        conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "partitioner": "murmur2_random",
            "client.id": "peakroute-worker-outbox",
            # A broker restart must not fail deliveries: librdkafka retries until this deadline.
            "message.timeout.ms": 120_000,
            # Delivery reports for failures only: a report is a Python call under the GIL, and a
            # worker produces ~9 records per order; success is what flush() returning means.
            "on_delivery": self._on_delivery,
            "delivery.report.only.error": True,
        }
        conf.update(overrides)
        self._producer = Producer(conf)
        self._lock = threading.Lock()
        self._errors: list[str] = []
        self.sent = 0

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            with self._lock:
                self._errors.append(str(err))

    def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
             timestamp: float | None = None, headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue one record (``timestamp`` in epoch seconds, default now)."""
        kwargs: dict[str, Any] = {}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp:
            kwargs["timestamp"] = int(timestamp * 1000)
        if headers:
            kwargs["headers"] = headers
        while True:
            try:
                self._producer.produce(topic, value, key, **kwargs)
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                self._producer.poll(0.01)
        self.sent += 1

    async def flushed(self, timeout: float = 150.0) -> None:
        """Wait until every record sent so far is acknowledged; raise :class:`OutboxError` if any
        record of this process was not (the caller must not remember a batch whose effects may be
        missing: it exits and the batch is read again)."""
        if len(self._producer):  # records still queued or in flight
            remaining = await asyncio.get_running_loop().run_in_executor(None, self._producer.flush, timeout)
            if remaining:
                raise OutboxError(f"{remaining} records not acknowledged within {timeout:g} s")
        with self._lock:
            if self._errors:
                raise OutboxError(f"{len(self._errors)} records not delivered, e.g. {self._errors[0]}")

    def close(self, timeout: float = 10.0) -> int:
        return self._producer.flush(timeout)


class _SentMessage(NamedTuple):
    partition: int


class _Sent(NamedTuple):
    """What faust's ``Table.on_key_set``/``on_key_del`` read of the record ``send_changelog`` returns."""

    message: _SentMessage


def carry_changelogs(app: Any, outbox: Outbox, tables: list[Any]) -> None:
    """Send the tables' changelog records through the outbox too, and make faust's commit wait
    for them.

    Why: after the outbox took the batches' own messages, faust's Python produce path was left
    carrying the changelogs — about 5.7 records per order (then order-state, order-versions,
    stock-holds, stock-levels) at tens of µs of Python each.  The records are built by faust
    itself (``Topic.as_future_message``: the table's own key/value serializers and partition), so
    what lands on the changelog topic is byte-for-byte what faust would have written, and
    recovery, standbys and the audit read it unchanged.

    The crash rule faust relies on — a changelog record is durable before the input offset that
    produced it is committed — holds because faust's commit first awaits ``producer.flush()``,
    which now also waits for the outbox (:meth:`Outbox.flushed`).  Called once per outbox (the
    worker has one per agent that keeps tables); each call adds its outbox to that wait.

    Each record carries the consumer-group generation of the assignment its writer holds
    (``app.consumer_generation_id``, set by faust at every assignment), so that recovery can leave
    out a replaced owner's late writes (tables/stale.py).
    """
    stamps: dict[int, list[tuple[str, bytes]]] = {}

    def stamp() -> list[tuple[str, bytes]]:
        gen = int(getattr(app, "consumer_generation_id", 0) or 0)
        headers = stamps.get(gen)
        if headers is None:
            headers = stamps[gen] = [(GENERATION_HEADER, str(gen).encode())]
        return headers

    for table in tables:
        topic = table.changelog_topic
        name = topic.get_topic_name()

        def send_changelog(partition: int | None, key: Any, value: Any, key_serializer: Any = None,
                           value_serializer: Any = None, *, _table: Any = table, _topic: Any = topic,
                           _name: str = name) -> Any:
            key_serializer = key_serializer or _table.key_serializer
            value_serializer = value_serializer or _table.value_serializer
            if partition is None:  # the producer picks (use_partitioner tables; ours name it)
                fut = _topic.as_future_message(key=key, value=value, key_serializer=key_serializer,
                                               value_serializer=value_serializer)
                msg = fut.message
                outbox.send(_name, msg.key, msg.value, partition=msg.partition, headers=stamp())
                return fut
            # The same serialization as faust's as_future_message, without the asyncio future and
            # pending-message objects it builds per record (~3% of the event loop, measured).
            headers = _topic.prepare_headers(None)
            final_key, headers = _topic.prepare_key(key, key_serializer, None, headers)
            final_value, _ = _topic.prepare_value(value, value_serializer, None, headers)
            outbox.send(_name, final_key, final_value, partition=partition, headers=stamp())
            return _Sent(_SentMessage(partition))  # faust reads .message.partition (key TTL bookkeeping)

        table.send_changelog = send_changelog

        def send_changelog_bytes(partition: int, key: bytes, value: bytes | None, *, _name: str = name) -> None:
            """A record already serialized by the table's store (tables/store.Store.write)."""
            outbox.send(_name, key, value, partition=partition, headers=stamp())

        table.send_changelog_bytes = send_changelog_bytes

    producer = app.producer
    faust_flush = producer.flush

    async def flush() -> None:
        await faust_flush()
        await outbox.flushed()

    producer.flush = flush
