"""Bulk table restore: the changelog partitions a worker is assigned (new and kept ones: see
``tables/store.Store.on_rebalance``), read with a plain librdkafka consumer straight into the
partitions' RocksDB databases before faust's recovery starts.

Why: a worker start, and every takeover (no standby copies: streams/app.py says why), rebuilds the
tables of its partitions from their changelogs, and the partitions stand still meanwhile.  Through
faust that costs ~100 µs of the worker's one core per record even after tables/recovery.py made it
~3× cheaper (8,300–10,100 records/s, 2026-12-05): each record is turned into an aiokafka record, a
faust message and an event, passes the conductor's flow control and two queues, and is applied in
the recovery loop.  Kafka Streams restores its stores with a consumer of their own for the same
reason.  Here a ``confluent_kafka.Consumer`` hands over each record for a few µs of Python and the
records go into RocksDB in write batches (measured in benchmarks/RESULTS.md).

What faust is left with is its own mechanism for stores that survive on disk: each partition's
database keeps the offset of the last record applied (faust's ``set_persisted_offset`` key, written
in the same write batch as the records, so a restore cut short anywhere leaves a consistent
database), and faust's recovery reads only what lies past it — the records written since the
restore began, usually none.  The records are the same, in the same order, through the same filter
for a replaced owner's late writes (tables/stale.py: the store's own :class:`LateRecords`, which the
faust tail continues), written as the same raw bytes faust's RocksDB store writes.

The restore is bounded (``max_s``): it runs inside the rebalance (faust's
``on_partitions_assigned``, before its recovery), and an eager rebalance waits for every member, so
a restore past its budget stops and leaves the rest to faust's recovery.  It runs on a thread: the
event loop stays free (timers, the consumer's heartbeats run on faust's consumer thread anyway).
Any error does the same: the persisted offsets say how far it got.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .stale import LateRecords, generation_of

log = logging.getLogger("peakroute.restore")

#: Records asked of librdkafka per call (a batch of records per partition goes to RocksDB per call).
CONSUME_BATCH = 10_000

#: Stop waiting for records after this long without any (a partition whose tail was compacted away
#: or whose end moved back ends with an end-of-partition event well before this).
IDLE_LIMIT_S = 10.0


class RestoreError(Exception):
    """The restore consumer reported an error; faust's recovery takes over from the persisted offsets."""


@dataclass
class PartitionRestore:
    """One changelog partition's restore: read from ``start`` up to ``end`` (its high watermark
    when the restore began, exclusive)."""

    tp: Hashable  #: the partition as the store's LateRecords knows it (faust's TP)
    start: int
    end: int
    last: int | None = None  #: last offset read (applied or left out)
    kept: int = 0
    dropped: int = 0
    reached_end: bool = False  #: an end-of-partition event at or past ``end``
    #: Keys of the records left out, to be written again by the owner (tables/repair.py).
    late_keys: list[bytes] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.reached_end or (self.last is not None and self.last >= self.end - 1)


@dataclass
class RestoreSummary:
    partitions: int
    records: int  #: records read
    kept: int
    dropped: int  #: left out: a replaced owner's late writes
    seconds: float
    complete: bool  #: every partition read to the end it had when the restore began
    #: (partition, key) of each record left out (tables/repair.py writes them again).
    late_keys: list[tuple[int, bytes]] = field(default_factory=list)


def apply_messages(messages: Iterable[Any], parts: Mapping[int, PartitionRestore], late: LateRecords,
                   batch_for: Callable[[int], Any], eof_code: int | None = None) -> set[int]:
    """Put (or, for a tombstone, delete) each kept record of ``messages`` — librdkafka messages of
    one topic, in offset order per partition — into its partition's write batch; a record past its
    partition's ``end`` is left for faust's recovery.  Returns the partitions that read anything.

    ``eof_code``: librdkafka's end-of-partition error code (a message that is an event, not a
    record); any other error raises :class:`RestoreError`."""
    touched: set[int] = set()
    for msg in messages:
        err = msg.error()
        part = parts.get(msg.partition())
        if err is not None:
            if eof_code is not None and err.code() == eof_code:
                if part is not None and msg.offset() >= part.end:
                    part.reached_end = True
                continue
            raise RestoreError(f"{msg.topic()}[{msg.partition()}]: {err}")
        if part is None or part.done:
            continue
        offset = msg.offset()
        if offset >= part.end:  # written since the restore began: faust's recovery reads it
            part.reached_end = True
            continue
        ts_type, ts_ms = msg.timestamp()
        if late.keep(part.tp, ts_ms / 1000.0 if ts_type else None, generation_of(msg.headers())):
            value = msg.value()
            if value is None:
                batch_for(msg.partition()).delete(msg.key())
            else:
                batch_for(msg.partition()).put(msg.key(), value)
            part.kept += 1
        else:
            part.dropped += 1
            part.late_keys.append(msg.key())
        part.last = offset
        touched.add(msg.partition())
    return touched


def restore_partitions(*, bootstrap: str, topic: str, persisted: Mapping[int, int | None],
                       tps: Mapping[int, Hashable], dbs: Mapping[int, Any], offset_key: bytes,
                       late: LateRecords, max_s: float, new_batch: Callable[[], Any],
                       consumer_factory: Callable[[dict[str, Any]], Any] | None = None) -> RestoreSummary:
    """Read the changelog partitions ``persisted`` (partition → offset of the last record its
    database holds, None for none) of ``topic`` to their current end into ``dbs`` (partition →
    RocksDB database), moving each database's persisted offset (``offset_key``) with its records.
    Runs on a thread; blocks for at most about ``max_s``."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    t0 = time.monotonic()
    make = consumer_factory or Consumer
    consumer = make({
        "bootstrap.servers": bootstrap,
        # Never joins or commits: partitions are assigned by hand.  A unique id all the same, so
        # that nothing this consumer does can touch another group's offsets.
        "group.id": f"peakroute-restore-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        # Big fetches, but a bounded prefetch queue: the worker's RSS is watched in the soaks.
        "fetch.max.bytes": 32 * 1024 * 1024,
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        "queued.max.messages.kbytes": 64 * 1024,
        "client.id": "peakroute-worker-restore",
    })
    parts: dict[int, PartitionRestore] = {}
    try:
        assignment = []
        for partition, last in sorted(persisted.items()):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            start = low if last is None else max(last + 1, low)
            if start >= high:
                continue
            parts[partition] = PartitionRestore(tps[partition], start, high)
            assignment.append(TopicPartition(topic, partition, start))
        if assignment:
            consumer.assign(assignment)
        batches: dict[int, Any] = {}  # partition -> this round's write batch

        def batch_for(partition: int) -> Any:
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = new_batch()
            return batch

        idle_since = time.monotonic()
        while parts and not all(p.done for p in parts.values()):
            if time.monotonic() - t0 > max_s:
                log.warning("table restore: %s stopped after its %.0f s budget; faust's recovery reads the rest",
                            topic, max_s)
                break
            messages = consumer.consume(CONSUME_BATCH, 0.2)
            if not messages:
                if time.monotonic() - idle_since > IDLE_LIMIT_S:
                    log.warning("table restore: %s: nothing received for %.0f s; faust's recovery reads the rest",
                                topic, IDLE_LIMIT_S)
                    break
                continue
            idle_since = time.monotonic()
            batches.clear()
            for partition in apply_messages(messages, parts, late, batch_for, KafkaError._PARTITION_EOF):
                # The persisted offset in the same batch as the records: a restore cut short
                # leaves every database consistent with the offset it names.
                batch_for(partition).put(offset_key, str(parts[partition].last).encode())
            for partition, batch in batches.items():
                dbs[partition].write(batch)
    finally:
        consumer.close()
    return RestoreSummary(
        partitions=len(parts), records=sum(p.kept + p.dropped for p in parts.values()),
        kept=sum(p.kept for p in parts.values()), dropped=sum(p.dropped for p in parts.values()),
        seconds=time.monotonic() - t0, complete=all(p.done for p in parts.values()),
        late_keys=[(partition, key) for partition, p in parts.items() for key in p.late_keys])
