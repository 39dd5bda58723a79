"""Read whole topics, from the first offset to the current end (audits, reports, the demo)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition


def read_all(bootstrap: str, topics: list[str], timeout: float = 120.0) -> Iterator[tuple[str, int, int, bytes | None, bytes | None]]:
    """(topic, partition, offset, key, value) of every record now in ``topics``."""
    for msg in read_messages(bootstrap, topics, timeout):
        yield msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value()


def read_messages(bootstrap: str, topics: list[str], timeout: float = 120.0) -> Iterator[Message]:
    """Every record now in ``topics`` as confluent-kafka messages (timestamps, headers), each
    partition in offset order."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"peakroute-reader-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        ends: dict[tuple[str, int], tuple[int, int]] = {}
        for t in topics:
            md = c.list_topics(t, timeout=10).topics.get(t)
            if md is None or md.error is not None:
                continue
            for p in md.partitions:
                for attempt in range(20):
                    try:
                        lo, hi = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)
                        break
                    except KafkaException:
                        if attempt == 19:
                            raise
                        time.sleep(0.5)
                if hi > lo:
                    ends[(t, p)] = (lo, hi)
        if not ends:
            return
        c.assign([TopicPartition(t, p, lo) for (t, p), (lo, _) in ends.items()])
        remaining = {tp: hi for tp, (_, hi) in ends.items()}
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for msg in c.consume(2000, 0.5):
                if msg.error():
                    continue
                tp = (msg.topic(), msg.partition())
                if tp not in remaining or msg.offset() >= remaining[tp]:
                    continue
                yield msg
                if msg.offset() + 1 >= remaining[tp]:
                    del remaining[tp]
        if remaining:
            raise TimeoutError(f"could not read to the end of {sorted(remaining)} in {timeout:.0f} s")
    finally:
        c.close()


def read_json_objects(bootstrap: str, topics: list[str]) -> list[dict]:
    """Every record now in ``topics`` whose value is a JSON object, decoded (others skipped)."""
    import orjson

    out = []
    for *_, value in read_all(bootstrap, topics):
        try:
            doc = orjson.loads(value) if value else None
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out
