"""Normalize stage: raw channel payloads → canonical orders, duplicates dropped, bad input dead-lettered.

The decision for one raw message is the pure :func:`process_raw`; the faust agent around it only
reads, writes and remembers.  Nothing raised while handling a message may escape the agent (faust
would ack the message and lose it), so the agent turns any failure into a dead letter.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import faust

from ..domain.canonical import Rejection
from ..domain.catalog import Catalog
from ..domain.channels import normalize
from ..domain.dedup import OrderVersion, Verdict, judge, version_of
from ..metrics import registry as m
from ..streams.codecs import dumps
from ..streams.outbox import Outbox
from ..streams.topics import RAW_PREFIX
from .common import (GUARDS, BATCH_MAX, BatchWrites, dead_letter_exception, die, owned_events,
                     send_dead_letter)

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
             versions: Any, catalog: Catalog, outbox: Outbox, concurrency: int = 1,
             batch_wait_s: float) -> Any:
    """Declare the normalize agent on ``app``.

    ``versions`` is the changelog-backed table (order_id → last emitted version) co-partitioned
    with the raw topics: a channel order id always lands on the same raw partition, so its version
    lives on the worker that reads it.
    """

    batch_versions = BatchWrites(versions)

    def last_version(order_id: str) -> OrderVersion | None:
        d = batch_versions.get(order_id)
        return OrderVersion.from_dict(d) if d else None

    @app.agent(raw, name="normalize", concurrency=concurrency)
    async def normalize_agent(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(BATCH_MAX, within=batch_wait_s):
            started = time.perf_counter()
            events = owned_events(app, batch, "normalize")
            for event in events:
                batch_versions.event = event
                msg = event.message
                channel = channel_of(msg.topic)
                try:
                    m.RAW_RECEIVED.labels(channel).inc()
                    out = process_raw(channel, msg.value, catalog, last_version)
                    if out.rejection is not None:
                        rej = out.rejection
                        await send_dead_letter(dlq, event, channel=channel, stage="normalize", reason=rej.code,
                                               field=rej.field, detail=rej.detail)
                    elif out.value is not None and out.version is not None and out.order_id is not None:
                        # Keep the raw topic's timestamp (ingest time): end-to-end latency is measured from it.
                        outbox.send(orders.get_topic_name(), out.order_id.encode(), out.value,
                                    timestamp=msg.timestamp)
                        batch_versions[out.order_id] = out.version.to_dict()
                        m.ORDERS_EMITTED.labels(channel, out.verdict.value, out.status).inc()  # type: ignore[union-attr]
                        if msg.timestamp:
                            m.INGEST_TO_CANONICAL.observe(max(0.0, time.time() - msg.timestamp))
                    else:
                        m.DUPLICATES.labels(channel, out.verdict.value).inc()  # type: ignore[union-attr]
                except Exception as exc:  # noqa: BLE001 - nothing may escape a faust agent
                    try:
                        await dead_letter_exception(dlq, event, exc, channel=channel, stage="normalize")
                    except Exception as exc2:  # noqa: BLE001
                        die("normalize", exc2)
            try:
                GUARDS.freeze.check("normalize effects")  # a woken zombie exits before its orders count
                await outbox.flushed()  # canonical orders durable before the dedup table remembers them
            except Exception as exc:  # noqa: BLE001
                die("normalize", exc)
            batch_versions.flush()
            m.STAGE_SECONDS.labels("normalize").observe((time.perf_counter() - started) / max(1, len(events)))

    return normalize_agent
