"""Plumbing shared by the agents: dead-lettering, partition choice, batching sends per partition."""

from __future__ import annotations

import logging
import traceback
import zlib
from collections import defaultdict
from typing import Any, Iterable

import faust

from ..domain.deadletter import Source, dead_letter
from ..metrics import registry as m
from ..streams.codecs import dumps

log = logging.getLogger("peakroute.agents")


def sku_partition(sku: str, partitions: int) -> int:
    """The partition that owns a SKU's stock (stable across processes and restarts)."""
    return zlib.crc32(sku.encode()) % partitions


async def send_dead_letter(dlq: faust.TopicT, event: faust.EventT, *, channel: str | None, stage: str,
                           reason: str, field: str | None, detail: str) -> None:
    msg = event.message
    record = dead_letter(
        reason=reason, field=field, detail=detail, channel=channel, stage=stage,
        source=Source(msg.topic, msg.partition, msg.offset, msg.timestamp and int(msg.timestamp * 1000)),
        key=msg.key, payload=msg.value)
    m.DEAD_LETTERS.labels(channel or "-", stage, reason).inc()
    await dlq.send(key=msg.key, value=dumps(record))


def is_plumbing_failure(exc: BaseException) -> bool:
    """A failure of the machinery (tables, Kafka, network), not of the message being handled."""
    import asyncio

    from faust.exceptions import FaustError

    return isinstance(exc, (FaustError, ConnectionError, asyncio.TimeoutError, OSError))


async def dead_letter_exception(dlq: faust.TopicT, event: faust.EventT, exc: BaseException, *,
                                channel: str | None, stage: str) -> None:
    """Turn an unexpected failure into a dead letter: nothing may escape a faust agent.

    A plumbing failure is no fault of the message: the worker exits instead (see :func:`die`) and
    the message is read again after the restart.
    """
    if is_plumbing_failure(exc):
        die(stage, exc)
    msg = event.message
    log.exception("%s failed on %s[%s]@%s", stage, msg.topic, msg.partition, msg.offset)
    detail = f"{type(exc).__name__}: {exc}"[:500] + " | " + traceback.format_exc(limit=3)[-500:]
    await send_dead_letter(dlq, event, channel=channel, stage=stage, reason="internal_error", field=None,
                           detail=detail)


def by_partition(items: Iterable[tuple[int, Any]]) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = defaultdict(list)
    for p, item in items:
        out[p].append(item)
    return out


def in_event(event: faust.EventT) -> None:
    """Make ``event`` the stream's current event while a batch is processed event by event.

    faust writes a table change to the changelog partition of the *current* event; in a
    ``take_events`` batch that would be the batch's last event, so each event is made current
    before its own table writes.  (Uses faust's context variable: there is no public setter.)
    """
    import weakref

    from faust.streams import _current_event  # type: ignore[attr-defined]

    _current_event.set(weakref.ref(event))


#: Batch size and wait for ``take_events``: big enough to amortize Redis and Kafka round trips,
#: short enough that an order never waits long for its batch to fill.
BATCH_MAX = 500
BATCH_WITHIN_S = 0.01


def die(stage: str, exc: BaseException) -> None:
    """Stop the worker process at once, without committing what it has read.

    For failures of the plumbing itself (Kafka producer, not one bad message): letting the
    exception escape would make faust ack the batch and lose it.  Exiting hard leaves the
    offsets uncommitted, so the restarted worker (compose/systemd restart the process) reads the
    batch again; every state change downstream is idempotent, so that is safe.
    """
    import os

    log.critical("%s: unrecoverable plumbing failure, exiting for a clean re-read: %r", stage, exc)
    logging.shutdown()
    os._exit(70)


_DELETED = object()


class BatchWrites:
    """Table writes of one batch, applied once per key at the end of the batch.

    Many operations of a batch touch the same key (one hot SKU's stock level, one order's state
    as its replies arrive); faust sends a changelog record for every write, so coalescing them is
    the cheapest large win.  Reads see the batch's own writes.  Each key remembers the event it was
    written under, so its one changelog record goes to that event's partition.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self.event: faust.EventT | None = None
        self._dirty: dict[Any, Any] = {}
        self._events: dict[Any, faust.EventT] = {}

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self._dirty:
            v = self._dirty[key]
            return default if v is _DELETED else v
        return self.table.get(key, default)

    def __contains__(self, key: Any) -> bool:
        return self.get(key, _DELETED) is not _DELETED

    def __getitem__(self, key: Any) -> Any:
        v = self.get(key, _DELETED)
        if v is _DELETED:
            raise KeyError(key)
        return v

    def __setitem__(self, key: Any, value: Any) -> None:
        self._dirty[key] = value
        self._events[key] = self.event  # type: ignore[assignment]

    def __delitem__(self, key: Any) -> None:
        self._dirty[key] = _DELETED
        self._events[key] = self.event  # type: ignore[assignment]

    def values(self) -> list[Any]:
        merged = {k: v for k, v in self.table.items() if k not in self._dirty}
        merged.update({k: v for k, v in self._dirty.items() if v is not _DELETED})
        return list(merged.values())

    def flush(self) -> int:
        """Write every changed key once; return how many changelog records that took."""
        for key, value in self._dirty.items():
            in_event(self._events[key])
            if value is _DELETED:
                if key in self.table:
                    del self.table[key]
            else:
                self.table[key] = value
        n = len(self._dirty)
        self._dirty.clear()
        self._events.clear()
        return n


async def acked(pending: list[Any]) -> None:
    """Wait until Kafka acknowledged every send in ``pending`` (the futures ``topic.send`` returns).

    The rule that makes a crash safe: a stage's *effects* (messages to other stages) must be durable
    before its *memory* of having produced them (table changelog).  Otherwise a kill -9 between the
    two leaves a table that says "done" for work whose messages never left, and the re-read after
    restart skips it — a lost order.  So: send, wait for the acks, then write the tables.
    """
    import asyncio

    if pending:
        await asyncio.gather(*pending)
        pending.clear()
