"""Choosing the warehouse(s) that ship an order: a pure function of order, network and stock view.

Rules, in order (as order-routing systems such as Shopify order routing and HotWax brokering do):
1. eligible warehouses: allowed to ship for the channel, serve the buyer's province, under daily capacity;
2. prefer shipping the whole order from one warehouse;
3. nearest to the buyer's province (distances within 100 km count as equal);
4. stock balance: among equals, the warehouse left with the most stock of the order's SKUs.
When no single warehouse can ship everything, split over at most ``max_shipments`` warehouses
(whole lines, never half a line).  Gift lines ride with the order's first shipment, and are left out
rather than holding the order when that warehouse has none (赠品送完即止).

The stock view may be stale: the plan is only a proposal that each SKU's owner confirms or refuses.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .network import Network, Warehouse

#: Distances closer than this are "equally near" so that stock balance decides between them.
DISTANCE_BAND_KM = 100.0


@dataclass(frozen=True)
class LineNeed:
    line_id: str
    sku: str
    qty: int
    gift: bool = False


@dataclass(frozen=True)
class Shipment:
    warehouse: str
    line_ids: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """Either shipments (routable) or a backorder reason (no shipments)."""

    shipments: tuple[Shipment, ...] = ()
    omitted_gifts: tuple[str, ...] = ()
    backorder_reason: str | None = None

    @property
    def routable(self) -> bool:
        return bool(self.shipments)

    @property
    def split(self) -> bool:
        return len(self.shipments) > 1

    def warehouse_of(self) -> dict[str, str]:
        return {lid: s.warehouse for s in self.shipments for lid in s.line_ids}


Available = Callable[[str, str], int]  # (sku, warehouse) -> units available to promise


def eligible_warehouses(network: Network, channel: str, province_code: str,
                        capacity_left: Callable[[str], int]) -> list[Warehouse]:
    """Eligible warehouses, nearest first."""
    whs = [w for w in network.warehouses
           if channel in w.channels and w.serves_province(province_code) and capacity_left(w.code) > 0]
    return sorted(whs, key=lambda w: (w.distance_to(province_code), w.code))


def _covers(needs: Sequence[LineNeed], wh: str, available: Available) -> bool:
    total: dict[str, int] = defaultdict(int)
    for n in needs:
        total[n.sku] += n.qty
    return all(available(sku, wh) >= qty for sku, qty in total.items())


def plan_order(lines: Sequence[LineNeed], *, channel: str, province_code: str, network: Network,
               available: Available, capacity_left: Callable[[str], int]) -> Plan:
    """The shipments that should ship this order, or why it must be backordered."""
    candidates = eligible_warehouses(network, channel, province_code, capacity_left)
    if not candidates:
        return Plan(backorder_reason="no_eligible_warehouse")
    main = [n for n in lines if not n.gift]
    # Gifts ride along; an order of gifts only is shipped as it is.
    gifts = [n for n in lines if n.gift] if main else []
    main = main or list(lines)
    units: dict[str, int] = defaultdict(int)  # what the whole order needs of each SKU
    for n in main:
        units[n.sku] += n.qty

    def rank(w: Warehouse) -> tuple[int, int, float]:
        """Nearness band first, then the stock balance left (more is better), then distance."""
        distance = w.distance_to(province_code)
        balance = min(available(n.sku, w.code) - n.qty for n in main)
        return int(distance // DISTANCE_BAND_KM), -balance, distance

    whole = [w for w in candidates if all(available(sku, w.code) >= qty for sku, qty in units.items())]
    if whole:
        best = whole[0] if len(whole) == 1 else min(whole, key=rank)
        shipments = [(best.code, list(main))]
    else:
        shipments = _split(main, candidates, province_code, available, network.max_shipments)
        if shipments is None:
            return Plan(backorder_reason="insufficient_stock")
    # Gifts go with the first (largest) shipment when that warehouse has them.
    first_wh, first_lines = shipments[0]
    omitted: list[str] = []
    for g in gifts:
        if _covers([*[n for n in first_lines if n.sku == g.sku], g], first_wh, available):
            first_lines.append(g)
        else:
            omitted.append(g.line_id)
    return Plan(shipments=tuple(Shipment(wh, tuple(n.line_id for n in ls)) for wh, ls in shipments),
                omitted_gifts=tuple(omitted))


def _split(main: Sequence[LineNeed], candidates: Sequence[Warehouse], province_code: str,
           available: Available, max_shipments: int) -> list[tuple[str, list[LineNeed]]] | None:
    """Greedy split: each step takes the warehouse that can ship the most units of what is left."""
    remaining = list(main)
    shipments: list[tuple[str, list[LineNeed]]] = []
    used: set[str] = set()
    while remaining and len(shipments) < max_shipments:
        best: tuple[int, float, str, list[LineNeed]] | None = None
        for w in candidates:
            if w.code in used:
                continue
            taken: list[LineNeed] = []
            for n in sorted(remaining, key=lambda n: -n.qty):
                if _covers([*taken, n], w.code, available):
                    taken.append(n)
            units = sum(n.qty for n in taken)
            if units and (best is None or (units, -w.distance_to(province_code)) > (best[0], -best[1])):
                best = (units, w.distance_to(province_code), w.code, taken)
        if best is None:
            return None
        _, _, code, taken = best
        used.add(code)
        shipments.append((code, taken))
        taken_ids = {n.line_id for n in taken}
        remaining = [n for n in remaining if n.line_id not in taken_ids]
    return None if remaining else shipments
