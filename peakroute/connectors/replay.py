"""File replay source: backfill a channel's raw topic from a JSONL file after an outage.

One payload per line, written unchanged (normalize dead-letters whatever is bad), keyed by channel
order id like the webhook does, so a replayed order lands on the same partition as its live updates.
Replaying the same file twice is harmless: unchanged re-sends are dropped as duplicates downstream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaError, Producer

from ..domain.channels import channel_order_id
from ..streams.topics import raw_topic


@dataclass
class ReplayStats:
    lines: int = 0
    skipped_blank: int = 0
    without_key: int = 0
    delivered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


def replay_file(path: str | Path, channel: str, producer: Producer,
                progress: Callable[[ReplayStats], None] | None = None) -> ReplayStats:
    """Write every non-blank line of ``path`` to ``peakroute.raw.<channel>``; wait for delivery."""
    stats = ReplayStats()
    topic = raw_topic(channel)
    started = last_report = time.monotonic()

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is None:
            stats.delivered += 1
        else:
            stats.failed += 1
            if len(stats.errors) < 10:
                stats.errors.append(str(err))

    with open(path, "rb") as fh:
        for raw_line in fh:
            line = raw_line.rstrip(b"\r\n")
            if not line.strip():
                stats.skipped_blank += 1
                continue
            stats.lines += 1
            key = channel_order_id(channel, line)
            if key is None:
                stats.without_key += 1
            while True:
                try:
                    producer.produce(topic, value=line, key=key.encode() if key else None, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
            now = time.monotonic()
            if progress and now - last_report >= 1.0:
                last_report = now
                stats.elapsed_s = now - started
                progress(stats)
    producer.flush(60)
    stats.elapsed_s = time.monotonic() - started
    return stats
