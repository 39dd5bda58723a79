"""The independent oversell check (pure)."""

from peakroute.domain.reconcile import check_oversell


def ship(sid: str, oid: str, sku: str, wh: str, qty: int) -> dict:
    return {"type": "shipment_request", "shipment_id": sid, "order_id": oid, "warehouse": wh,
            "lines": [{"line_id": "1", "sku": sku, "qty": qty, "gift": False}]}


def snap(sku: str, wh: str, on_hand: int, safety: int = 0) -> dict:
    return {"type": "snapshot", "sku": sku, "warehouse": wh, "on_hand": on_hand, "safety_stock": safety}


def test_within_stock_is_ok_and_duplicates_count_once() -> None:
    r = check_oversell([snap("A", "W", 3)], [ship("s1", "o1", "A", "W", 2), ship("s1", "o1", "A", "W", 2),
                                             ship("s2", "o2", "A", "W", 1)])
    assert r.ok and r.promised == {("A", "W"): 3}


def test_promising_more_than_sellable_is_a_violation() -> None:
    r = check_oversell([snap("A", "W", 3, safety=1)], [ship("s1", "o1", "A", "W", 3)])
    assert r.violations == [("A", "W", 3, 2)]


def test_cancelled_and_shipped_requests_are_not_live() -> None:
    reqs = [ship("s1", "o1", "A", "W", 2), {"type": "cancel_request", "shipment_id": "s1"},
            ship("s2", "o2", "A", "W", 2)]
    inv = [snap("A", "W", 2), {"type": "shipment_confirmed", "sku": "A", "warehouse": "W", "order_id": "o2",
                               "line_id": "1"}]
    r = check_oversell(inv, reqs)
    assert r.ok and r.promised == {} and r.on_hand[("A", "W")] == 0


def test_short_pick_lowers_on_hand() -> None:
    r = check_oversell([snap("A", "W", 3), {"type": "short_pick", "sku": "A", "warehouse": "W", "missing": 2}],
                       [ship("s1", "o1", "A", "W", 2)])
    assert r.violations == [("A", "W", 2, 1)]
