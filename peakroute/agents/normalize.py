"""Normalize step: raw channel payloads → canonical orders, duplicates dropped, bad input dead-lettered.

The decision for one raw message is the pure :func:`process_raw`.  It runs inside the fulfillment
agent (``agents/fulfillment.py``), which reads the raw topics itself: the order's routing state lives
on the raw partition its payloads land on, next to the last version emitted for it (``state["v"]``),
so a canonical order never makes a second trip through Kafka before it is routed.  The canonical
order is still published on ``peakroute.orders`` (public contract) — as an output only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..domain.canonical import Rejection
from ..domain.catalog import Catalog
from ..domain.channels import normalize
from ..domain.dedup import OrderVersion, Verdict, judge, version_of
from ..streams.codecs import dumps
from ..streams.topics import RAW_PREFIX


@dataclass(frozen=True)
class Outcome:
    """What to do with one raw message."""

    verdict: Verdict | None  #: None when rejected
    order_id: str | None = None
    status: str | None = None
    value: bytes | None = None  #: canonical order JSON, when it must be emitted
    order: dict[str, Any] | None = None  #: the same canonical order as a dict, when it must be emitted
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
    return Outcome(verdict, order.order_id, order.status, dumps(order_dict), order_dict, version)


def is_raw(topic: str) -> bool:
    """A channel's raw topic (``peakroute.raw.<channel>``), as opposed to an internal one."""
    return topic.startswith(RAW_PREFIX)
