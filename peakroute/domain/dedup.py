"""Which canonical order states are news.

Channels re-send the whole payload whenever an order changes, and sometimes the same payload twice;
re-sends can arrive out of order (a cancel before its create).  The router keeps, per order, the
version it last emitted and lets through only a *newer, different* state, so downstream sees each
state once and never goes backwards.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum

import orjson

from .canonical import TERMINAL_STATUSES, CanonicalOrder

# How far along its life an order is; used only to break ties between equal update times.
_PROGRESS = {"pending_payment": 0, "paid": 1, "on_hold": 1, "shipped": 2, "completed": 3, "cancelled": 3}


class Verdict(str, Enum):  # noqa: UP042 - str() and format() of a member stay as they are
    NEW = "new"  #: first state seen for this order: emit
    CHANGED = "changed"  #: a newer, different state: emit
    DUPLICATE = "duplicate"  #: same content as last emitted: drop (counted)
    STALE = "stale"  #: older than what was emitted, or after a terminal state: drop (counted)

    @property
    def emit(self) -> bool:
        return self in (Verdict.NEW, Verdict.CHANGED)


@dataclass(frozen=True)
class OrderVersion:
    """What the router remembers of the last state it emitted for an order."""

    updated_at: str
    status: str
    fingerprint: str

    def to_dict(self) -> dict[str, str]:
        return {"u": self.updated_at, "s": self.status, "f": self.fingerprint}

    @classmethod
    def from_dict(cls, d: dict[str, str]) -> OrderVersion:
        return cls(d["u"], d["s"], d["f"])


def fingerprint(order_dict: dict) -> str:
    """Content hash of a canonical order (key order independent)."""
    return hashlib.blake2b(orjson.dumps(order_dict, option=orjson.OPT_SORT_KEYS), digest_size=12).hexdigest()


def version_of(order: CanonicalOrder, order_dict: dict | None = None) -> OrderVersion:
    d = order.to_dict() if order_dict is None else order_dict
    return OrderVersion(order.updated_at or order.created_at, order.status, fingerprint(d))


def judge(previous: OrderVersion | None, incoming: OrderVersion) -> Verdict:
    """Decide whether ``incoming`` is news given the last emitted ``previous``.

    ISO-8601 UTC strings of one fixed format compare correctly as strings.
    """
    if previous is None:
        return Verdict.NEW
    if incoming.fingerprint == previous.fingerprint:
        return Verdict.DUPLICATE
    if previous.status in TERMINAL_STATUSES:
        return Verdict.STALE
    if incoming.updated_at < previous.updated_at:
        return Verdict.STALE
    if incoming.updated_at == previous.updated_at and _PROGRESS[incoming.status] < _PROGRESS[previous.status]:
        return Verdict.STALE
    return Verdict.CHANGED
