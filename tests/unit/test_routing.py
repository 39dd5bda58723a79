"""Warehouse choice (pure): eligibility, whole-order preference, nearness, balance, splits, gifts,
priority and ship-by."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from peakroute.domain.network import Network, Warehouse, load_network
from peakroute.domain.routing import LineNeed, plan_order

ALL = frozenset({"tmall", "jd", "douyin", "wxmini"})


def wh(code: str, lat: float, lon: float, serves=("*",), cap: int = 100, channels=ALL, cutoff="16:00") -> Warehouse:
    return Warehouse(code, code, lat, lon, frozenset(serves), cap, cutoff, frozenset(channels))


# Hangzhou (33) is near EAST (Shanghai), far from SOUTH (Guangzhou) and NORTH (Beijing).
EAST, SOUTH, NORTH = wh("EAST", 31.2, 121.4), wh("SOUTH", 23.1, 113.3), wh("NORTH", 39.9, 116.4)
NET = Network(warehouses=(EAST, SOUTH, NORTH), max_shipments=2)


def stock(**kw: int):
    table = {tuple(k.split("__")): v for k, v in kw.items()}
    return lambda sku, w: table.get((sku, w), 0)


def plan(lines, available, net=NET, channel="tmall", province="33", capacity=lambda w: 10):
    return plan_order(lines, channel=channel, province_code=province, network=net, available=available,
                      capacity_left=capacity)


A1, B1 = LineNeed("1", "A", 1), LineNeed("2", "B", 1)


def test_nearest_warehouse_with_everything_wins() -> None:
    p = plan([A1, B1], stock(A__EAST=5, B__EAST=5, A__SOUTH=5, B__SOUTH=5))
    assert [s.warehouse for s in p.shipments] == ["EAST"]


def test_whole_order_from_one_warehouse_beats_a_nearer_split() -> None:
    p = plan([A1, B1], stock(A__EAST=5, B__SOUTH=5, A__NORTH=5, B__NORTH=5))
    assert [s.warehouse for s in p.shipments] == ["NORTH"] and not p.split


def test_split_when_no_single_warehouse_has_everything() -> None:
    p = plan([A1, B1], stock(A__EAST=5, B__SOUTH=5))
    assert p.split and {s.warehouse for s in p.shipments} == {"EAST", "SOUTH"}
    assert p.warehouse_of() == {"1": "EAST", "2": "SOUTH"}


def test_more_splits_than_allowed_backorders() -> None:
    c1 = LineNeed("3", "C", 1)
    p = plan([A1, B1, c1], stock(A__EAST=5, B__SOUTH=5, C__NORTH=5))
    assert not p.routable and p.backorder_reason == "insufficient_stock"


def test_no_stock_backorders() -> None:
    assert plan([A1], stock()).backorder_reason == "insufficient_stock"


def test_same_sku_on_two_lines_counts_together() -> None:
    p = plan([LineNeed("1", "A", 2), LineNeed("2", "A", 2)], stock(A__EAST=3, A__SOUTH=4))
    assert [s.warehouse for s in p.shipments] == ["SOUTH"]


def test_channel_and_province_and_capacity_make_eligibility() -> None:
    net = Network(warehouses=(wh("EAST", 31.2, 121.4, channels={"jd"}), wh("SOUTH", 23.1, 113.3, serves=("44",)),
                              NORTH), max_shipments=2)
    p = plan([A1], stock(A__EAST=5, A__SOUTH=5, A__NORTH=5), net=net, channel="tmall", province="33")
    assert [s.warehouse for s in p.shipments] == ["NORTH"]
    p = plan([A1], stock(A__EAST=5, A__NORTH=5), capacity=lambda w: 0 if w == "EAST" else 5)
    assert [s.warehouse for s in p.shipments] == ["NORTH"]
    assert plan([A1], stock(A__EAST=5), capacity=lambda w: 0).backorder_reason == "no_eligible_warehouse"


def test_stock_balance_breaks_ties_between_equally_near_warehouses() -> None:
    twin_a, twin_b = wh("T1", 31.2, 121.4), wh("T2", 31.25, 121.45)
    net = Network(warehouses=(twin_a, twin_b))
    p = plan([A1], stock(A__T1=2, A__T2=50), net=net)
    assert [s.warehouse for s in p.shipments] == ["T2"]


def test_gift_rides_with_the_first_shipment_or_is_left_out() -> None:
    gift = LineNeed("9", "G", 1, gift=True)
    p = plan([A1, gift], stock(A__EAST=5, G__EAST=1))
    assert p.shipments[0].line_ids == ("1", "9") and not p.omitted_gifts
    p = plan([A1, gift], stock(A__EAST=5, G__SOUTH=1))
    assert p.shipments[0].line_ids == ("1",) and p.omitted_gifts == ("9",)


@given(
    lines=st.lists(st.tuples(st.sampled_from("ABCDE"), st.integers(1, 4), st.booleans()), min_size=1, max_size=5),
    avail=st.dictionaries(st.tuples(st.sampled_from("ABCDE"), st.sampled_from(["EAST", "SOUTH", "NORTH"])),
                          st.integers(0, 6)),
    max_shipments=st.integers(1, 3),
)
def test_any_plan_is_feasible_on_its_view_and_within_limits(lines, avail, max_shipments) -> None:
    needs = [LineNeed(str(i), s, q, g) for i, (s, q, g) in enumerate(lines)]
    net = Network(warehouses=NET.warehouses, max_shipments=max_shipments)
    p = plan(needs, lambda s, w: avail.get((s, w), 0), net=net)
    if not p.routable:
        return
    assert len(p.shipments) <= max_shipments
    ids = [lid for s in p.shipments for lid in s.line_ids]
    assert len(ids) == len(set(ids)), "a line ships once"
    main = {n.line_id for n in needs if not n.gift} or {n.line_id for n in needs}
    assert main <= set(ids), "every non-gift line ships"
    assert set(ids) | set(p.omitted_gifts) == {n.line_id for n in needs}
    for s in p.shipments:
        need = defaultdict(int)
        for lid in s.line_ids:
            n = needs[int(lid)]
            need[n.sku] += n.qty
        for sku, q in need.items():
            assert avail.get((sku, s.warehouse), 0) >= q


def test_ship_by_follows_the_cutoff() -> None:
    w = wh("X", 0, 0, cutoff="16:00")
    before = datetime(2026, 11, 11, 7, 0, tzinfo=UTC)  # 15:00 Beijing
    after = datetime(2026, 11, 11, 9, 0, tzinfo=UTC)  # 17:00 Beijing
    assert w.ship_by(before) == datetime(2026, 11, 11, 15, 59, 59, tzinfo=UTC)
    assert w.ship_by(after) == datetime(2026, 11, 12, 15, 59, 59, tzinfo=UTC)


def test_priority_rules_from_the_default_network() -> None:
    net = load_network()
    assert net.priority(urgent=True, payment_fen=300_000, categories=set()) == 1
    assert net.priority(urgent=True, payment_fen=100, categories=set()) == 2
    assert net.priority(urgent=False, payment_fen=300_000, categories={"baby"}) == 2
    assert net.priority(urgent=False, payment_fen=100, categories={"baby"}) == 3
    assert net.priority(urgent=False, payment_fen=100, categories={"electronics"}) == 4


def test_default_network_serves_every_province_for_every_channel() -> None:
    from peakroute.domain.provinces import PROVINCES

    net = load_network()
    assert 6 <= len(net.warehouses) <= 8
    for p in PROVINCES:
        for ch in ("tmall", "jd", "douyin", "wxmini"):
            assert any(w.serves_province(p.code) and ch in w.channels for w in net.warehouses), (p.name, ch)
