"""An independent oversell check: promised units vs. stock, from the public topics alone.

It reads what the warehouses were told (``peakroute.fulfillment.*``: shipment and cancel requests)
and what the WMS said about stock (``peakroute.inventory``), never the router's own tables or
counters, and checks that for every (SKU, warehouse) the units in live shipment requests fit in
on-hand minus safety stock.  Re-delivered requests are counted once (by shipment id and line).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable


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


def check_oversell(inventory: Iterable[dict], requests: Iterable[dict]) -> OversellReport:
    """``inventory``: inventory messages in topic order; ``requests``: fulfillment topic values."""
    report = OversellReport()
    live: dict[str, dict] = {}
    cancelled: set[str] = set()
    for req in requests:
        sid = req.get("shipment_id")
        if req.get("type") == "shipment_request" and sid not in cancelled:
            live[sid] = req
        elif req.get("type") == "cancel_request":
            cancelled.add(sid)
            live.pop(sid, None)
    line_units: dict[tuple[str, str], tuple[str, str, int]] = {}  # (order, line) -> (sku, wh, qty) still live
    for req in live.values():
        for line in req["lines"]:
            line_units[(req["order_id"], line["line_id"])] = (line["sku"], req["warehouse"], int(line["qty"]))
    on_hand: dict[tuple[str, str], int] = defaultdict(int)
    safety: dict[tuple[str, str], int] = defaultdict(int)
    for msg in inventory:
        key = (msg.get("sku"), msg.get("warehouse"))
        kind = msg.get("type")
        if kind == "snapshot":
            on_hand[key] = int(msg["on_hand"])
            if msg.get("safety_stock") is not None:
                safety[key] = int(msg["safety_stock"])
        elif kind in ("adjustment", "receipt"):
            on_hand[key] = max(0, on_hand[key] + int(msg["delta"]))
        elif kind == "shipment_confirmed":
            shipped = line_units.pop((msg["order_id"], msg["line_id"]), None)
            if shipped:
                on_hand[key] = max(0, on_hand[key] - shipped[2])
    promised: dict[tuple[str, str], int] = defaultdict(int)
    for sku, wh, qty in line_units.values():
        promised[(sku, wh)] += qty
    for key, units in sorted(promised.items()):
        sellable = on_hand.get(key, 0) - safety.get(key, 0)
        if units > sellable:
            report.violations.append((key[0], key[1], units, sellable))
    report.promised, report.on_hand, report.safety = dict(promised), dict(on_hand), dict(safety)
    report.live_shipments, report.cancelled_shipments = len(live), len(cancelled)
    return report
