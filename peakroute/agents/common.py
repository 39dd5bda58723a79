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


async def dead_letter_exception(dlq: faust.TopicT, event: faust.EventT, exc: BaseException, *,
                                channel: str | None, stage: str) -> None:
    """Turn an unexpected failure into a dead letter: nothing may escape a faust agent."""
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
