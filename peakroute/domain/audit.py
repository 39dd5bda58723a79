"""The ledger checker (pure): given everything the topics hold, is every promise kept?

Checks, from the public topics only:
1. every raw payload is accounted for: it normalizes to an order that reached ``peakroute.orders``,
   or it has a dead letter pointing at its exact source offset;
2. every order that wanted stock has an outcome — routed, split, backordered, cancelled — or is
   still held for review / waiting for payment (reported, not a failure);
3. no order line has more than one live shipment request (no double reservation reaching a WMS);
4. promised units fit in on-hand minus safety stock for every (SKU, warehouse) (reconcile.py);
5. every shipment request sent for an order that ended cancelled was followed by a cancel request.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .canonical import Rejection
from .reconcile import check_oversell

TERMINAL = ("routed", "split", "backordered", "cancelled")


@dataclass
class AuditReport:
    raw_payloads: int = 0
    dead_lettered: int = 0
    orders: int = 0
    outcomes: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        lines = [f"raw payloads {self.raw_payloads:,}; dead-lettered {self.dead_lettered:,}; orders {self.orders:,}",
                 "outcomes: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.outcomes.items()))]
        lines += [f"note: {n}" for n in self.notes]
        if self.ok:
            lines.append("AUDIT OK: nothing lost, nothing twice, nothing oversold")
        else:
            lines.append(f"AUDIT FAILED: {len(self.problems)} problem(s)")
            lines += [f"  ✗ {p}" for p in self.problems[:50]]
            if len(self.problems) > 50:
                lines.append(f"  … and {len(self.problems) - 50} more")
        return "\n".join(lines)


def audit(raw: Iterable[tuple[str, int, int, bytes | None]], order_ids: Iterable[str],
          dead_letters: Iterable[dict], events: Iterable[dict], requests: Iterable[dict],
          inventory: Iterable[dict], normalize_id: Callable[[str, bytes | None], str]) -> AuditReport:
    """``raw``: (topic, partition, offset, value); ``normalize_id(topic, value)`` returns the order id
    or raises :class:`Rejection`."""
    r = AuditReport()
    emitted = set(order_ids)
    dlq_sources = {(d["source"]["topic"], d["source"]["partition"], d["source"]["offset"])
                   for d in dead_letters if d.get("source")}
    r.dead_lettered = len(dlq_sources)
    for topic, partition, offset, value in raw:
        r.raw_payloads += 1
        try:
            oid = normalize_id(topic, value)
        except Rejection:
            if (topic, partition, offset) not in dlq_sources:
                r.problems.append(f"lost: rejected payload {topic}[{partition}]@{offset} has no dead letter")
            continue
        if oid not in emitted:
            r.problems.append(f"lost: {topic}[{partition}]@{offset} ({oid}) never reached peakroute.orders")

    history: dict[str, list[dict]] = defaultdict(list)
    for ev in events:
        history[ev["order_id"]].append(ev)
    r.orders = len(emitted)
    held_open = waiting = 0
    for oid in emitted:
        evs = history.get(oid, [])
        finals = [e["event"] for e in evs if e["event"] in TERMINAL]
        if finals:
            r.outcomes[finals[-1]] += 1
        elif any(e["event"] == "held" for e in evs) and not any(e["event"] == "released_from_review" for e in evs):
            held_open += 1
        else:
            waiting += 1
    if held_open:
        r.notes.append(f"{held_open:,} orders still held for review")
    if waiting:
        r.notes.append(f"{waiting:,} orders without a routing outcome (unpaid, on hold, or not yet processed)")

    live: dict[str, dict] = {}
    cancelled: set[str] = set()
    sent_by_order: dict[str, set[str]] = defaultdict(set)
    for req in requests:
        sid = req.get("shipment_id")
        if req.get("type") == "shipment_request":
            sent_by_order[req["order_id"]].add(sid)
            if sid not in cancelled:
                live[sid] = req
        elif req.get("type") == "cancel_request":
            cancelled.add(sid)
            live.pop(sid, None)
    per_line: Counter = Counter()
    for req in live.values():
        for line in req["lines"]:
            per_line[(req["order_id"], line["line_id"])] += 1
    for (oid, lid), n in per_line.items():
        if n > 1:
            r.problems.append(f"twice: {oid} line {lid} has {n} live shipment requests")
    for oid, sids in sent_by_order.items():
        finals = [e["event"] for e in history.get(oid, []) if e["event"] in TERMINAL]
        if finals and finals[-1] == "cancelled":
            for sid in sids - cancelled:
                r.problems.append(f"cancel not propagated: {oid} was cancelled but {sid} was never cancelled")
    oversell = check_oversell(inventory, requests=[*live.values()])
    for sku, wh, promised, sellable in oversell.violations:
        r.problems.append(f"oversold: {sku} @ {wh}: {promised} promised > {sellable} sellable")
    return r


def stuck_orders(orders: Iterable[dict], events: Iterable[dict]) -> list[str]:
    """Orders whose latest canonical state is ``paid`` but that have no routing outcome and are not
    held for review: the router owes them an answer (routed, split, backordered or cancelled).

    ``orders``: every record of ``peakroute.orders`` in topic order (the last one per order wins);
    ``events``: every ``peakroute.order-events`` record.  Unpaid orders waiting for payment, orders
    the channel put on hold and orders still held by a breaker are not stuck.
    """
    last: dict[str, dict] = {}
    for o in orders:
        if "order_id" in o:
            last[o["order_id"]] = o
    history: dict[str, list[str]] = defaultdict(list)
    for ev in events:
        if "order_id" in ev:
            history[ev["order_id"]].append(ev.get("event", ""))
    stuck = []
    for oid, order in last.items():
        if order.get("status") != "paid":
            continue
        evs = history.get(oid, [])
        if any(e in TERMINAL for e in evs):
            continue
        held = [i for i, e in enumerate(evs) if e == "held"]
        released = [i for i, e in enumerate(evs) if e == "released_from_review"]
        if held and (not released or released[-1] < held[-1]):
            continue
        stuck.append(oid)
    return sorted(stuck)
