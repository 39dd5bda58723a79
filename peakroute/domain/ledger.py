"""Stock and reservations of the SKUs one partition owns — the only place a unit can be promised.

Invariant, for every (SKU, warehouse), after every operation:

    reserved <= on_hand - safety        (available = on_hand - reserved - safety >= 0)

A reservation ("hold") is a record keyed by (order, line), not a bare decrement, so that applying the
same request twice — faust delivers at least once — changes nothing.  An inventory correction that
breaks the invariant (stock found damaged at a cycle count) evicts the most recently paid holds until
it holds again; those orders are *oversold* and must be re-routed or backordered by their owner.

The stores are plain mutable mappings: dicts in tests, changelog-backed faust tables in the worker.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass


def level_key(sku: str, warehouse: str) -> str:
    return f"{sku}|{warehouse}"


def hold_key(order_id: str, line_id: str) -> str:
    return f"{order_id}|{line_id}"


@dataclass(frozen=True)
class Hold:
    order_id: str
    line_id: str
    sku: str
    warehouse: str
    qty: int
    attempt: int
    paid_at: str  #: eviction order on oversell: the most recently paid goes first
    reply_to: int = -1  #: partition of the order's owner (where news about this hold is sent)
    plan: str = ""  #: the order's plan id: tells two plans with the same attempt number apart

    def to_dict(self) -> dict:
        d = {"o": self.order_id, "l": self.line_id, "s": self.sku, "w": self.warehouse, "q": self.qty,
             "a": self.attempt, "p": self.paid_at, "r": self.reply_to}
        if self.plan:
            d["t"] = self.plan
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Hold:
        return cls(d["o"], d["l"], d["s"], d["w"], d["q"], d["a"], d["p"], d.get("r", -1), d.get("t", ""))


@dataclass(frozen=True)
class ReserveResult:
    outcome: str  #: "confirmed" | "refused" | "stale"
    available: int  #: units still available at that warehouse after the decision


#: level_key -> [on_hand, reserved, safety(, offset, index of the last stock change(, {inventory
#: partition: offset of the last WMS message applied}))]
Levels = MutableMapping[str, list]
Holds = MutableMapping[str, dict]  # hold_key -> Hold.to_dict() (+ "x": [offset, index] once shipped)

#: Position of a change that came without one (tests, direct calls): never "already applied".
NO_POSITION = (-1, -1)


def is_shipped(hold: dict) -> bool:
    """A shipped hold is kept for a while as a tombstone: no longer reserved stock, but proof of
    the shipment (its units and where it was applied) for a batch read again after a crash."""
    return "x" in hold


def live_holds(holds: Holds) -> list[dict]:
    return [h for h in holds.values() if "x" not in h]


class Ledger:
    """Operations on one partition's stock levels and holds."""

    def __init__(self, levels: Levels, holds: Holds) -> None:
        self.levels = levels
        self.holds = holds

    # -- reading -------------------------------------------------------------------------------
    def level(self, sku: str, warehouse: str) -> tuple[int, int, int]:
        v = self.levels.get(level_key(sku, warehouse))
        return (v[0], v[1], v[2]) if v else (0, 0, 0)

    def available(self, sku: str, warehouse: str) -> int:
        on_hand, reserved, safety = self.level(sku, warehouse)
        return on_hand - reserved - safety

    def _put(self, sku: str, warehouse: str, on_hand: int, reserved: int, safety: int) -> None:
        key = level_key(sku, warehouse)
        old = self.levels.get(key)
        # Keep the level's watermarks (elements 3-5), if any: see applied_at() and inventory_applied().
        self.levels[key] = [on_hand, reserved, safety, *old[3:]] if old and len(old) > 3 else \
            [on_hand, reserved, safety]

    def applied_at(self, sku: str, warehouse: str) -> tuple[int, int]:
        """(stock-ops offset, index in that message) of the last inventory change applied to this
        level, or (-1, -1).  Snapshots and deltas arrive at-least-once: a batch re-read after a
        crash would add a receipt's delta twice, so a level remembers — in the same record, written
        atomically with the new on-hand — the position of the last change it took."""
        v = self.levels.get(level_key(sku, warehouse))
        return (int(v[3]), int(v[4])) if v and len(v) > 4 else (-1, -1)

    def mark_applied(self, sku: str, warehouse: str, position: tuple[int, int]) -> None:
        key = level_key(sku, warehouse)
        v = self.levels.get(key) or [0, 0, 0]
        self.levels[key] = [v[0], v[1], v[2], position[0], position[1], *v[5:6]]

    def inventory_applied(self, sku: str, warehouse: str, source_partition: int) -> int:
        """Offset of the last WMS message (``peakroute.inventory``) from ``source_partition``
        applied to this level, or -1.

        Why: the inventory stage forwards each WMS message to the SKU's owner at least once — a
        worker that dies after forwarding and before committing forwards it again, as a *new*
        stock-ops message, which :meth:`applied_at` cannot recognise.  A receipt counted twice
        is stock that does not exist, sold.  The stage forwards one inventory partition's messages
        in order, so one offset per inventory partition says what this level has taken."""
        v = self.levels.get(level_key(sku, warehouse))
        marks = v[5] if v and len(v) > 5 else {}
        return int(marks.get(str(source_partition), -1))

    def mark_inventory(self, sku: str, warehouse: str, source_partition: int, offset: int) -> None:
        key = level_key(sku, warehouse)
        v = self.levels.get(key) or [0, 0, 0]
        pos = v[3:5] if len(v) > 4 else [-1, -1]
        marks = dict(v[5]) if len(v) > 5 else {}
        marks[str(source_partition)] = offset
        self.levels[key] = [v[0], v[1], v[2], *pos, marks]

    def set_reserved(self, key: str, reserved: int) -> int:
        """Overwrite one level's ``reserved`` (see :func:`reserved_drift`); return the old value."""
        v = self.levels.get(key)
        on_hand, old, safety = (v[0], v[1], v[2]) if v else (0, 0, 0)
        self.levels[key] = [on_hand, reserved, safety, *(v[3:] if v else [])]
        return old

    # -- reservations --------------------------------------------------------------------------
    def reserve(self, order_id: str, line_id: str, sku: str, warehouse: str, qty: int, attempt: int,
                paid_at: str, reply_to: int = -1, position: tuple[int, int] = NO_POSITION,
                plan: str = "") -> ReserveResult:
        """Hold ``qty`` units for (order, line) at ``warehouse``, all or nothing; idempotent.
        ``position`` (stock-ops offset, index) is kept in the hold (``"c"``): see :meth:`ship`.

        ``plan`` identifies the order's plan.  The same request again is confirmed without holding
        twice; a request of a newer plan replaces the hold.  Plans with the same attempt number
        exist only when a crashed order owner planned again (its first plan was never written):
        its requests reach this partition in the order they were made, so the later one wins."""
        key = hold_key(order_id, line_id)
        existing = self.holds.get(key)
        if existing is not None:
            held = Hold.from_dict(existing)
            same = held.attempt == attempt and held.plan == plan
            if is_shipped(existing):  # the line has shipped: a request read again changes nothing
                return ReserveResult("confirmed" if same else "stale", self.available(sku, warehouse))
            if held.attempt > attempt:
                return ReserveResult("stale", self.available(sku, warehouse))
            if same and held.warehouse == warehouse and held.qty == qty:
                return ReserveResult("confirmed", self.available(sku, warehouse))
            self.release(order_id, line_id)  # a newer plan replaces the old hold
        on_hand, reserved, safety = self.level(sku, warehouse)
        if qty <= 0 or on_hand - reserved - safety < qty:
            return ReserveResult("refused", on_hand - reserved - safety)
        self._put(sku, warehouse, on_hand, reserved + qty, safety)
        hold = Hold(order_id, line_id, sku, warehouse, qty, attempt, paid_at, reply_to, plan).to_dict()
        if position != NO_POSITION:
            hold["c"] = list(position)
        self.holds[key] = hold
        return ReserveResult("confirmed", on_hand - reserved - qty - safety)

    def release(self, order_id: str, line_id: str, attempt: int | None = None,
                warehouse: str | None = None, plan: str | None = None) -> Hold | None:
        """Give a hold's units back; only what was really held, only once.  Returns the hold released.

        ``attempt`` / ``warehouse`` / ``plan``: release only the hold of that plan (a confirmation
        from a plan the order no longer has must not release the plan it has now)."""
        key = hold_key(order_id, line_id)
        existing = self.holds.get(key)
        if existing is None or is_shipped(existing):
            return None
        held = Hold.from_dict(existing)
        if (attempt is not None and held.attempt != attempt) or (warehouse is not None and held.warehouse != warehouse) \
                or (plan is not None and held.plan != plan):
            return None
        on_hand, reserved, safety = self.level(held.sku, held.warehouse)
        self._put(held.sku, held.warehouse, on_hand, max(0, reserved - held.qty), safety)
        del self.holds[key]
        return held

    def ship(self, order_id: str, line_id: str, position: tuple[int, int] = NO_POSITION) -> Hold | None:
        """The WMS shipped the line: on-hand and reserved drop by its units, and the hold becomes a
        shipped tombstone (``"x"``: the stock-ops position where the shipment was applied).

        Exactly once, even when a crash tore the batch (the level and the hold are separate
        changelog records) and the batch is read again: the level's watermark (:meth:`applied_at`)
        says whether its record already took the shipment.  Returns the hold if this call shipped
        it, None for an unknown or already shipped line."""
        key = hold_key(order_id, line_id)
        existing = self.holds.get(key)
        if existing is None:
            return None
        if position != NO_POSITION and tuple(existing.get("c", NO_POSITION)) > position:
            return None  # a hold made after this confirmation (seen when a torn batch is read again)
        held = Hold.from_dict(existing)
        level_has_it = position != NO_POSITION and self.applied_at(held.sku, held.warehouse) >= position
        on_hand, reserved, safety = self.level(held.sku, held.warehouse)
        if is_shipped(existing):
            # The tombstone landed; did its level?  If not, re-derived ``reserved`` still counts
            # it (see reserved_drift): both come down now.
            at = (int(existing["x"][0]), int(existing["x"][1]))
            if at == NO_POSITION or self.applied_at(held.sku, held.warehouse) >= at:
                return None
            self._put(held.sku, held.warehouse, max(0, on_hand - held.qty), max(0, reserved - held.qty), safety)
            self.mark_applied(held.sku, held.warehouse, at)
            return None
        if level_has_it:
            # The level landed (on-hand already down), the tombstone did not: the hold was counted
            # back into ``reserved`` when it was re-derived; take it out again.
            self._put(held.sku, held.warehouse, on_hand, max(0, reserved - held.qty), safety)
        else:
            self._put(held.sku, held.warehouse, max(0, on_hand - held.qty), max(0, reserved - held.qty), safety)
            if position != NO_POSITION:
                self.mark_applied(held.sku, held.warehouse, position)
        self.holds[key] = {**existing, "x": list(position)}
        return held

    # -- inventory -----------------------------------------------------------------------------
    def set_stock(self, sku: str, warehouse: str, on_hand: int | None = None, safety: int | None = None,
                  delta: int = 0) -> list[Hold]:
        """Apply a snapshot (absolute ``on_hand``) or a ``delta``; return the holds evicted (oversold)."""
        cur_on_hand, reserved, cur_safety = self.level(sku, warehouse)
        new_on_hand = (cur_on_hand if on_hand is None else on_hand) + delta
        new_on_hand = max(0, new_on_hand)
        new_safety = cur_safety if safety is None else max(0, safety)
        self._put(sku, warehouse, new_on_hand, reserved, new_safety)
        if reserved <= new_on_hand - new_safety:
            return []
        return self._evict(sku, warehouse)

    def evict_excess(self, sku: str, warehouse: str) -> list[Hold]:
        """Evict holds only if more is held than the level allows (none when it holds)."""
        on_hand, reserved, safety = self.level(sku, warehouse)
        return [] if reserved <= on_hand - safety else self._evict(sku, warehouse)

    def _evict(self, sku: str, warehouse: str) -> list[Hold]:
        """Release the most recently paid holds until reserved <= on_hand - safety again."""
        mine = sorted((Hold.from_dict(h) for h in live_holds(self.holds)
                       if h["s"] == sku and h["w"] == warehouse),
                      key=lambda h: (h.paid_at, h.order_id), reverse=True)
        evicted: list[Hold] = []
        for held in mine:
            on_hand, reserved, safety = self.level(sku, warehouse)
            if reserved <= on_hand - safety:
                break
            self.release(held.order_id, held.line_id)
            evicted.append(held)
        return evicted


def _evicted(held: Hold) -> dict:
    return {"outcome": "evicted", "order_id": held.order_id, "line_id": held.line_id, "sku": held.sku,
            "warehouse": held.warehouse, "attempt": held.attempt, "qty": held.qty, "reply_to": held.reply_to,
            "plan": held.plan}


def reserved_drift(levels: Levels, holds: Holds) -> dict[str, int]:
    """``level_key -> reserved`` as its hold records add up, for every level that disagrees.

    A batch's table changes reach the changelog as separate records, without a transaction, so a
    worker killed while writing them can leave a level and its holds out of step (faust flushes
    them all before it commits the batch's offsets, so the batch itself is re-read and re-applied).
    The holds are the truth for ``reserved``: each is one (order, line)'s promise, re-applied
    idempotently; a level's ``reserved`` is only their sum, kept for speed.  Re-deriving it before
    the re-read makes the re-applied batch land exactly (a lost hold is re-created and counted once,
    a surviving one is confirmed without counting it again).
    """
    sums: dict[str, int] = {}
    for h in holds.values():
        key = level_key(h["s"], h["w"])
        if "x" in h:
            # A shipped tombstone whose level did not take the shipment (a torn batch): its units
            # are still in the level's on-hand and still promised; counted until the shipment is
            # re-applied (Ledger.ship), or a reservation read again first would sell them twice.
            v = levels.get(key)
            applied = (int(v[3]), int(v[4])) if v and len(v) > 4 else NO_POSITION
            shipped_at = (int(h["x"][0]), int(h["x"][1]))
            if shipped_at == NO_POSITION or applied >= shipped_at:
                continue
        sums[key] = sums.get(key, 0) + int(h["q"])
    drift = {k: sums.get(k, 0) for k, v in levels.items() if v[1] != sums.get(k, 0)}
    drift.update({k: n for k, n in sums.items() if k not in levels and n})
    return drift


def apply_ops(ledger: Ledger, ops: list[dict], source_offset: int | None = None
              ) -> tuple[list[dict], set[tuple[str, str]]]:
    """Apply a batch of stock operations in order; return (replies, touched (sku, warehouse) pairs).

    ``source_offset`` is the stock-ops offset of the message the ops came in: an inventory change
    (``stock``) already applied from that position is skipped when the message is read again.

    Operations: ``reserve`` / ``release`` (from order owners), ``ship`` (WMS confirmed a shipment),
    ``stock`` (on-hand snapshot or delta, safety stock).  A reply goes to ``reply_to``, the partition
    of the order's owner.
    """
    replies: list[dict] = []
    touched: set[tuple[str, str]] = set()
    for index, op in enumerate(ops):
        kind = op["op"]
        if kind == "reserve":
            r = ledger.reserve(op["order_id"], op["line_id"], op["sku"], op["warehouse"], int(op["qty"]),
                               int(op["attempt"]), op.get("paid_at", ""), int(op.get("reply_to", -1)),
                               NO_POSITION if source_offset is None else (source_offset, index), op.get("plan", ""))
            touched.add((op["sku"], op["warehouse"]))
            replies.append({"outcome": r.outcome, "order_id": op["order_id"], "line_id": op["line_id"],
                            "sku": op["sku"], "warehouse": op["warehouse"], "attempt": op["attempt"],
                            "qty": op["qty"], "available": r.available, "reply_to": op.get("reply_to", -1),
                            "plan": op.get("plan", "")})
        elif kind == "release":
            held = ledger.release(op["order_id"], op["line_id"], op.get("attempt"), op.get("warehouse"), op.get("plan"))
            if held:
                touched.add((held.sku, held.warehouse))
        elif kind == "ship":
            held = ledger.ship(op["order_id"], op["line_id"],
                               NO_POSITION if source_offset is None else (source_offset, index))
            if held:
                touched.add((held.sku, held.warehouse))
                replies.append({"outcome": "shipped", "order_id": held.order_id, "line_id": held.line_id,
                                "sku": held.sku, "warehouse": held.warehouse, "attempt": held.attempt,
                                "qty": held.qty, "reply_to": held.reply_to, "plan": held.plan})
        elif kind == "stock":
            if source_offset is not None:
                position = (source_offset, index)
                applied = ledger.applied_at(op["sku"], op["warehouse"])
                if applied >= position:
                    # This very change, read again after a restart: not applied twice.  But if it
                    # is the last change its level took, the level may have landed without the
                    # evictions it caused (a torn batch: the level and its holds are separate
                    # records), leaving more held than on hand once ``reserved`` is re-derived
                    # from the holds: evict again, and say so.  (Not for an older change: a later
                    # one — a shipment — may still have to take its units off when read again.)
                    if applied == position:
                        for held in ledger.evict_excess(op["sku"], op["warehouse"]):
                            touched.add((op["sku"], op["warehouse"]))
                            replies.append(_evicted(held))
                    continue
            src = op.get("src")  # [inventory partition, offset] of the WMS message it came from
            if src is not None and ledger.inventory_applied(op["sku"], op["warehouse"], int(src[0])) >= int(src[1]):
                continue  # the same WMS message, forwarded again (see Ledger.inventory_applied)
            evicted = ledger.set_stock(op["sku"], op["warehouse"], on_hand=op.get("on_hand"),
                                       safety=op.get("safety"), delta=int(op.get("delta", 0)))
            touched.add((op["sku"], op["warehouse"]))
            if source_offset is not None:
                ledger.mark_applied(op["sku"], op["warehouse"], position)
            if src is not None:
                ledger.mark_inventory(op["sku"], op["warehouse"], int(src[0]), int(src[1]))
            replies += [_evicted(held) for held in evicted]
        else:
            raise ValueError(f"unknown stock operation {kind!r}")
    return replies, touched
