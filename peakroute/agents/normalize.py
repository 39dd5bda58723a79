"""Normalize stage: raw channel payloads → canonical orders, duplicates dropped, bad input dead-lettered.

The decision for one raw message is the pure :func:`process_raw`; the faust agent around it only
reads, writes and remembers.  Nothing raised while handling a message may escape the agent (faust
would ack the message and lose it), so the agent turns any failure into a dead letter.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import faust

from ..domain.canonical import Rejection
from ..domain.catalog import Catalog
from ..domain.channels import normalize
from ..domain.deadletter import Source, dead_letter
from ..domain.dedup import OrderVersion, Verdict, judge, version_of
from ..metrics import registry as m
from ..streams.codecs import dumps
from ..streams.topics import RAW_PREFIX

log = logging.getLogger("peakroute.normalize")


@dataclass(frozen=True)
class Outcome:
    """What to do with one raw message."""

    verdict: Verdict | None  #: None when rejected
    order_id: str | None = None
    status: str | None = None
    value: bytes | None = None  #: canonical order JSON, when it must be emitted
    version: OrderVersion | None = None  #: what to remember, when emitted
    rejection: Rejection | None = None


def channel_of(topic: str) -> str:
    return topic[len(RAW_PREFIX):] if topic.startswith(RAW_PREFIX) else topic


def process_raw(
    channel: str, payload: bytes | None, catalog: Catalog,
    last_version: Callable[[str], OrderVersion | None],
) -> Outcome:
    """Normalize one raw payload and judge it against the last emitted state of its order."""
    if not payload:
        return Outcome(None, rejection=Rejection("malformed_json", None, "empty payload (null or zero bytes)"))
    try:
        order = normalize(channel, payload, catalog)
    except Rejection as rej:
        return Outcome(None, rejection=rej)
    order_dict = order.to_dict()
    version = version_of(order, order_dict)
    verdict = judge(last_version(order.order_id), version)
    if not verdict.emit:
        return Outcome(verdict, order.order_id, order.status)
    return Outcome(verdict, order.order_id, order.status, dumps(order_dict), version)


def register(app: faust.App, *, raw: faust.TopicT, orders: faust.TopicT, dlq: faust.TopicT,
             versions: Any, catalog: Catalog, concurrency: int = 1) -> Any:
    """Declare the normalize agent on ``app``.

    ``versions`` is the changelog-backed table (order_id → last emitted version) co-partitioned
    with the raw topics: a channel order id always lands on the same raw partition, so its version
    lives on the worker that reads it.
    """

    def last_version(order_id: str) -> OrderVersion | None:
        d = versions.get(order_id)
        return OrderVersion.from_dict(d) if d else None

    async def send_dead_letter(event: faust.EventT, channel: str, stage: str, reason: str,
                               field: str | None, detail: str) -> None:
        msg = event.message
        record = dead_letter(
            reason=reason, field=field, detail=detail, channel=channel, stage=stage,
            source=Source(msg.topic, msg.partition, msg.offset, msg.timestamp and int(msg.timestamp * 1000)),
            key=msg.key, payload=msg.value)
        m.DEAD_LETTERS.labels(channel, stage, reason).inc()
        await dlq.send(key=msg.key, value=dumps(record))

    @app.agent(raw, name="normalize", concurrency=concurrency)
    async def normalize_agent(stream: faust.StreamT) -> None:
        async for event in stream.events():
            msg = event.message
            channel = channel_of(msg.topic)
            started = time.perf_counter()
            try:
                m.RAW_RECEIVED.labels(channel).inc()
                out = process_raw(channel, msg.value, catalog, last_version)
                if out.rejection is not None:
                    rej = out.rejection
                    await send_dead_letter(event, channel, "normalize", rej.code, rej.field, rej.detail)
                elif out.value is not None and out.version is not None and out.order_id is not None:
                    await orders.send(key=out.order_id.encode(), value=out.value)
                    versions[out.order_id] = out.version.to_dict()
                    m.ORDERS_EMITTED.labels(channel, out.verdict.value, out.status).inc()  # type: ignore[union-attr]
                    if msg.timestamp:
                        m.INGEST_TO_CANONICAL.observe(max(0.0, time.time() - msg.timestamp))
                else:
                    m.DUPLICATES.labels(channel, out.verdict.value).inc()  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001 - nothing may escape a faust agent
                log.exception("normalize failed on %s[%s]@%s", msg.topic, msg.partition, msg.offset)
                detail = f"{type(exc).__name__}: {exc}"[:500] + " | " + traceback.format_exc(limit=3)[-500:]
                try:
                    await send_dead_letter(event, channel, "normalize", "internal_error", None, detail)
                except Exception:  # noqa: BLE001
                    log.exception("could not dead-letter %s[%s]@%s", msg.topic, msg.partition, msg.offset)
                    raise
            finally:
                m.STAGE_SECONDS.labels("normalize").observe(time.perf_counter() - started)

    return normalize_agent
