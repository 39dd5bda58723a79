"""The worker's fast lane to Kafka: the messages each batch emits (canonical orders, reservation
requests and replies, shipment requests, order events, review records), produced by librdkafka.

Why not faust's own producer: faust's cost is per message, and its send path (Topic.send → aiokafka
→ Python produce-request building) was the largest item of a worker's profile — about 50–100 µs of
Python per message.  ``confluent_kafka.Producer.produce`` hands the record to librdkafka's C threads
in a few µs.  faust's producer stays in charge of what it must own: table changelogs.

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
from typing import Any

from confluent_kafka import KafkaError, Producer


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

    def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None,
             timestamp: float | None = None) -> None:
        """Queue one record (``timestamp`` in epoch seconds, default now)."""
        kwargs: dict[str, Any] = {"on_delivery": self._on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp:
            kwargs["timestamp"] = int(timestamp * 1000)
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, **kwargs)
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
