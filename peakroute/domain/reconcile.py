"""An independent oversell check: promised units vs. stock, from the public topics alone.

It reads what the warehouses were told (``peakroute.fulfillment.*``: shipment and cancel requests)
and what the WMS said about stock (``peakroute.inventory``), never the router's own tables or
counters, and checks that for every (SKU, warehouse) the units in live shipment requests fit in
on-hand minus safety stock.  Re-delivered requests are counted once (by shipment id and line).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class OversellReport:
    promised: dict[tuple[str, str], int] = field(default_factory=dict)  # (sku, wh) -> live units
    on_hand: dict[tuple[str, str], int] = field(default_factory=dict)
    safety: dict[tuple[str, str], int] = field(default_factory=dict)
    violations: list[tuple[str, str, int, int]] = field(default_factory=list)  # sku, wh, promised, sellable
    live_shipments: int = 0
    cancelled_shipments: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations


class OversellLedger:
    """The same check, incrementally: feed messages as they are read, ask at any time."""

    def __init__(self) -> None:
        self.live: dict[str, dict] = {}
        self.cancelled: set[str] = set()
        self.line_units: dict[tuple[str, str], tuple[str, str, int]] = {}
        self.on_hand: dict[tuple[str, str], int] = defaultdict(int)
        self.safety: dict[tuple[str, str], int] = defaultdict(int)
        self.promised: dict[tuple[str, str], int] = defaultdict(int)
        self.shipped: set[tuple[str, str]] = set()

    def request(self, req: dict) -> None:
        sid = req.get("shipment_id")
        if req.get("type") == "shipment_request" and sid not in self.cancelled and sid not in self.live:
            self.live[sid] = req
            for line in req["lines"]:
                key = (req["order_id"], line["line_id"])
                if key in self.shipped:
                    continue
                self.line_units[key] = (line["sku"], req["warehouse"], int(line["qty"]))
                self.promised[(line["sku"], req["warehouse"])] += int(line["qty"])
        elif req.get("type") == "cancel_request":
            self.cancelled.add(sid)
            gone = self.live.pop(sid, None)
            if gone:
                for line in gone["lines"]:
                    unit = self.line_units.pop((gone["order_id"], line["line_id"]), None)
                    if unit:
                        self.promised[(unit[0], unit[1])] -= unit[2]

    def inventory(self, msg: dict) -> None:
        key = (msg.get("sku"), msg.get("warehouse"))
        kind = msg.get("type")
        if kind == "snapshot":
            self.on_hand[key] = int(msg["on_hand"])
            if msg.get("safety_stock") is not None:
                self.safety[key] = int(msg["safety_stock"])
        elif kind in ("adjustment", "receipt"):
            self.on_hand[key] = max(0, self.on_hand[key] + int(msg["delta"]))
        elif kind == "short_pick":
            self.on_hand[key] = max(0, self.on_hand[key] - int(msg["missing"]))
        elif kind == "shipment_confirmed":
            line_key = (msg["order_id"], msg["line_id"])
            self.shipped.add(line_key)
            unit = self.line_units.pop(line_key, None)
            if unit:
                self.promised[(unit[0], unit[1])] -= unit[2]
                self.on_hand[key] = max(0, self.on_hand[key] - unit[2])

    def report(self) -> OversellReport:
        r = OversellReport()
        for key, units in sorted(self.promised.items()):
            if units <= 0:
                continue
            sellable = self.on_hand.get(key, 0) - self.safety.get(key, 0)
            if units > sellable:
                r.violations.append((key[0], key[1], units, sellable))
        r.promised = {k: v for k, v in self.promised.items() if v > 0}
        r.on_hand, r.safety = dict(self.on_hand), dict(self.safety)
        r.live_shipments, r.cancelled_shipments = len(self.live), len(self.cancelled)
        return r


def check_oversell(inventory: Iterable[dict], requests: Iterable[dict]) -> OversellReport:
    """``inventory``: inventory messages in topic order; ``requests``: fulfillment topic values.

    Requests are applied first: the check is about the final state, whatever order the two topics
    were read in.
    """
    ledger = OversellLedger()
    for req in requests:
        ledger.request(req)
    for msg in inventory:
        ledger.inventory(msg)
    return ledger.report()
