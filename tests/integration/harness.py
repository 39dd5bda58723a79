"""Plumbing for integration tests: run real worker processes and read real topics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from peakroute.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment that makes a child ``peakroute`` process use ``settings``."""
    # Only the log level passes through (PEAKROUTE_LOG_LEVEL=DEBUG: every fetch and agent batch in
    # the kept worker logs, for a bug hunt); every other setting comes from ``settings``.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEAKROUTE_") or k == "PEAKROUTE_LOG_LEVEL"}
    env.update({
        "PEAKROUTE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "PEAKROUTE_REDIS_URL": settings.redis_url,
        "PEAKROUTE_STATE_DIR": settings.state_dir,
        "PEAKROUTE_PARTITIONS": str(settings.partitions),
        "PEAKROUTE_APP_ID": settings.app_id,
        "PEAKROUTE_TABLE_STORE": settings.table_store,
        "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    })
    for ch, secret in settings.webhook_secrets.items():
        env[f"PEAKROUTE_WEBHOOK_SECRET_{ch.upper()}"] = secret
    env.update(extra)
    return env


class PeakrouteProcess:
    """A ``python -m peakroute ...`` child process with its output in a log file."""

    def __init__(self, settings: Settings, args: list[str], log_path: Path, **env: str) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "peakroute", *args], env=env_for(settings, **env),
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=str(ROOT),
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def unique_app_id(prefix: str = "it") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def caught_up(consumer: Consumer) -> bool:
    """Assigned, and at the end of every assigned partition (so nothing already written is unread)."""
    assigned = consumer.assignment()
    if not assigned:
        return False
    for tp in consumer.position(assigned):
        _, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
        if high > 0 and (tp.offset < 0 or tp.offset < high):
            return False
    return True


def read_topic(settings: Settings, topic: str, until: Callable[[list[dict]], bool], timeout: float = 60.0,
               keep: Callable[[dict], bool] = lambda _r: True) -> list[dict]:
    """Read ``topic`` from the beginning, decoding JSON values, until caught up with ``until(records)``
    true, or timeout.  (``until`` is only asked when nothing more is waiting, so later records of
    the same kind are not missed.)

    Each record is the decoded value plus ``_key``, ``_partition``, ``_offset``.
    """
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    records: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                if caught_up(consumer) and until(records):
                    return records
                continue
            if msg.error():
                continue
            try:
                value = orjson.loads(msg.value()) if msg.value() else {}
            except orjson.JSONDecodeError:
                value = {}
            if not isinstance(value, dict):
                value = {"_value": value}
            value["_raw"] = msg.value()
            value["_key"] = msg.key().decode() if msg.key() else None
            value["_partition"], value["_offset"] = msg.partition(), msg.offset()
            if keep(value):
                records.append(value)
        return records
    finally:
        consumer.close()


def partition_records(settings: Settings, topic: str, partition: int, start: int = 0) -> Iterator[Any]:
    """The librdkafka messages of one topic partition from offset ``start`` to its current end."""
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "it-partition-reader",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    c.assign([TopicPartition(topic, partition, start)])
    try:
        while True:
            msg = c.poll(10)
            assert msg is not None, "no end-of-partition event"
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                return
            yield msg
    finally:
        c.close()


def produce(settings: Settings, topic: str, items: Iterable[tuple[bytes | None, bytes | None]]) -> None:
    from peakroute.connectors.kafka import make_producer

    producer = make_producer(settings)
    for key, value in items:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def end_offsets(settings: Settings, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "offsets-probe"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    finally:
        consumer.close()
