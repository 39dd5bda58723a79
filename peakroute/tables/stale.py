"""Changelog records a frozen former owner sent too late, left out when a table is recovered.

Why: a worker frozen (SIGSTOP, a VM pause, a stalled host) with table writes still queued in
librdkafka sends them the moment it wakes — before its freeze watch makes it exit (agents.common.
FreezeWatch) — into changelog partitions the group gave to another worker meanwhile.  That worker
recovered the partition without them and went on writing; the zombie's records land after its
records, so the *next* recovery of the partition (a later rebalance or restart) would take the
zombie's stale value of a key as the last one.  Seen in the long-form zombie scenario (three 20 s
freezes): records delivered 19–20 s after records produced later on their partition, on the
stock-holds and stock-levels changelogs among others (``late_records`` in
tests/integration/faults.py); once an order line shipped twice.

How a late record is told apart: every changelog record carries, in a header, the consumer-group
generation in which its writer was assigned the partition (streams/outbox.carry_changelogs).  Only
a partition's owner writes its changelog and each new owner has a higher generation, so in offset
order the generations never go down — except for a replaced owner's late writes.  A record with a
lower generation than one already on the partition is left out, unless it was produced after
every record ahead of it: a generation counter that started again (the group was deleted and
re-created while no worker ran), not a late write.  No clock is compared across hosts to decide
that a record is late (only to recognise a restarted counter), and records without the header
(written before 2026-12-04) are always kept.  A late record that lands before the new owner wrote
anything to the partition is not recognised; the new owner's own writes of those keys come after
it and win.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

#: The header naming the generation in which the writer was assigned the partition.
GENERATION_HEADER = "peakroute-gen"


def generation_of(headers: Iterable[Any] | dict | None) -> int | None:
    """The writer's generation from a record's headers (pairs or a mapping), or None."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, dict) else headers
    for key, value in pairs:
        if key == GENERATION_HEADER:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


class LateRecords:
    """Per changelog partition, in offset order: the highest writer generation seen and the newest
    producer timestamp."""

    def __init__(self) -> None:
        self.seen: dict[Hashable, tuple[int, float]] = {}
        self.dropped = 0

    def keep(self, tp: Hashable, timestamp: float | None, generation: int | None) -> bool:
        """False for a replaced owner's late write: a lower generation than a record ahead of it on
        ``tp``, produced before the newest of them (timestamps in seconds; unknown ones are kept)."""
        if generation is None or not timestamp or timestamp <= 0:
            return True
        seen = self.seen.get(tp)
        if seen is None or generation >= seen[0]:
            self.seen[tp] = (generation, max(timestamp, seen[1]) if seen else timestamp)
            return True
        if timestamp > seen[1]:  # after everything on the partition: the counter started again
            self.seen[tp] = (generation, timestamp)
            return True
        self.dropped += 1
        return False


def fresh_ops(senders: LateRecords, partition: int, ops: list[dict], generation: int | None,
              timestamp: float | None) -> tuple[list[dict], list[dict]]:
    """(kept, late) of the operations of one message on stock-ops ``partition``.

    The same rule for the requests order owners send to SKU owners: an order partition's owner
    stamps its messages with its generation (agents/fulfillment.py).  On one stock-ops partition,
    in offset order, an operation for order partition ``reply_to`` with a lower generation than an
    earlier one for the same order partition, produced before it, was sent by a replaced owner and
    delivered late (a timely one lands first: an owner's sends are acknowledged before it gives its
    partitions up).  Applied, it would do harm: a frozen owner's reserve for a plan the new owner
    replaced (same attempt, another plan id) replaces the new plan's hold, and the new owner then
    releases it as unwanted — an order routed with no units held.  Judged per stock-ops partition
    (messages of two partitions have no order between them).  Operations without a ``reply_to``
    (inventory changes) and messages without a generation (older builds) are always kept."""
    if generation is None:
        return ops, []
    kept, late = [], []
    for op in ops:
        reply_to = op.get("reply_to")
        (kept if reply_to is None or senders.keep((partition, reply_to), timestamp, generation) else late).append(op)
    return kept, late
