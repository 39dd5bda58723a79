"""Held orders in the order-side state machine (pure): held orders are never reserved until released,
released exactly once, and rejected ones end cancelled."""

from __future__ import annotations

from peakroute.domain.catalog import Catalog, CatalogItem
from peakroute.domain.fulfillment import CANCELLED, DECIDED_EARLY, HELD, RESERVING, OrderRouter, StockView
from peakroute.domain.network import Network, Warehouse

NET = Network(warehouses=(Warehouse("WH-A", "A", 30, 120, frozenset({"*"}), 100, "16:00",
                                    frozenset({"douyin"})),))
ROUTER = OrderRouter(NET, Catalog({"S": CatalogItem("S", "S", "beauty", 100)}))
VIEW = StockView(lambda s, w: 10, lambda w: 10)


def order(status: str = "paid", updated: str = "2026-11-11T00:00:05Z") -> dict:
    return {"order_id": "douyin:1", "channel": "douyin", "channel_order_id": "1", "status": status,
            "created_at": "2026-11-11T00:00:00Z", "paid_at": "2026-11-11T00:00:05Z", "updated_at": updated,
            "payment_fen": 100, "freight_fen": 0, "urgent": False, "reserve_on": "payment",
            "lines": [{"line_id": "1", "sku": "S", "channel_sku_id": "S", "qty": 1, "unit_price_fen": 100,
                       "paid_fen": 100, "gift": False}],
            "ship_to": {"province": "浙江省", "province_code": "33", "city": "", "district": ""}}


def held_state():
    state, fx = ROUTER.on_order(None, order(), VIEW, "t0", hold_keys=["channel:douyin"])
    return state, fx


def test_a_held_order_is_not_reserved_and_goes_to_review() -> None:
    state, fx = held_state()
    assert state["status"] == HELD and not fx.stock_ops
    assert fx.held == [("channel:douyin", "douyin:1")]
    assert fx.review[0]["type"] == "held" and fx.review[0]["breaker"] == "channel:douyin"
    assert [e["event"] for e in fx.events] == ["accepted", "held"]


def test_resends_while_held_stay_held() -> None:
    state, _ = held_state()
    state, fx = ROUTER.on_order(state, order(updated="2026-11-11T00:01:00Z"), VIEW, "t1")
    assert state["status"] == HELD and not fx.stock_ops


def test_release_reserves_once() -> None:
    state, _ = held_state()
    state, fx = ROUTER.on_release(state, VIEW, "t1")
    assert state["status"] == RESERVING and len(fx.stock_ops) == 1 and fx.unheld == ["douyin:1"]
    again, fx2 = ROUTER.on_release(state, VIEW, "t2")
    assert again is state and not fx2.stock_ops


def test_reject_cancels_without_touching_stock() -> None:
    state, _ = held_state()
    state, fx = ROUTER.on_reject(state, "t1", by="operator:ann")
    assert state["status"] == CANCELLED and not fx.stock_ops
    assert fx.review[0]["type"] == "rejected" and fx.events[-1]["event"] == "cancelled"
    assert ROUTER.on_release(state, VIEW, "t2")[1].stock_ops == []


def test_channel_cancel_while_held_unholds() -> None:
    state, _ = held_state()
    state, fx = ROUTER.on_order(state, order("cancelled", updated="2026-11-11T00:02:00Z"), VIEW, "t1")
    assert state["status"] == CANCELLED and fx.unheld == ["douyin:1"] and not fx.stock_ops
    assert fx.review[0]["type"] == "cancelled"


# A review decision can arrive before the order it decides: a worker stopped after its batch put
# the order in the breaker's store but before it wrote the order's state, and the next owner reads
# the order again — the decision comes on another topic and can be read first.

def early(outcome: str, by: str, state: dict | None = None) -> dict:
    return ROUTER.on_decision_before_order(state, "douyin:1", outcome, by, "t1", breaker="channel:douyin")


def test_a_rejection_that_arrives_before_its_order_cancels_it_when_it_arrives() -> None:
    stub = early("reject", "operator:ann")
    assert stub["status"] == DECIDED_EARLY
    state, fx = ROUTER.on_order(stub, order(), VIEW, "t2", hold_keys=["channel:douyin"])
    assert state["status"] == CANCELLED and not fx.stock_ops and not fx.held
    assert [r["type"] for r in fx.review] == ["held", "rejected"]
    assert fx.review[-1]["by"] == "operator:ann" and fx.review[-1]["breaker"] == "channel:douyin"
    assert [e["event"] for e in fx.events] == ["accepted", "held", "cancelled"]
    # The same order read again changes nothing: nothing reopens a cancelled order.
    again, fx2 = ROUTER.on_order(state, order(), VIEW, "t3", hold_keys=["channel:douyin"])
    assert again["status"] == CANCELLED and not fx2.stock_ops and not fx2.held


def test_a_rejection_before_its_order_stands_even_if_the_breaker_has_closed() -> None:
    state, fx = ROUTER.on_order(early("reject", "operator:ann"), order(), VIEW, "t2")  # no breaker holds now
    assert state["status"] == CANCELLED and not fx.stock_ops and not fx.held


def test_a_rejection_before_an_unpaid_order_still_cancels_it() -> None:
    state, fx = ROUTER.on_order(early("reject", "operator:ann"), order("pending_payment"), VIEW, "t2")
    assert state["status"] == CANCELLED and fx.review[-1]["type"] == "rejected" and not fx.held


def test_a_release_that_arrives_before_its_order_routes_it_once_without_holding_it_again() -> None:
    state, fx = ROUTER.on_order(early("release", "breaker_drain"), order(), VIEW, "t2", hold_keys=["channel:douyin"])
    assert state["status"] == RESERVING and len(fx.stock_ops) == 1 and not fx.held
    assert fx.unheld == ["douyin:1"] and fx.review[-1]["type"] == "released"


def test_the_first_early_decision_wins() -> None:
    stub = early("reject", "operator:ann")
    assert early("release", "breaker_drain", stub) is stub
    state, _ = ROUTER.on_order(stub, order(), VIEW, "t2", hold_keys=["channel:douyin"])
    assert state["status"] == CANCELLED


def test_a_rejection_that_finds_the_order_already_on_its_way_still_cancels_it() -> None:
    """The hold was lost with a stopped worker's batch and the order was read again after the
    breaker closed: the operator's rejection (made while Redis still held it) still stands."""
    state, fx0 = ROUTER.on_order(None, order(), VIEW, "t0")  # not held: reserving
    assert state["status"] == RESERVING
    state, fx = ROUTER.on_reject(state, "t1", by="operator:ann")
    assert state["status"] == CANCELLED and fx.review[0]["type"] == "rejected"
    # The reservation it asked for is given back when its confirmation comes.
    ask = fx0.stock_ops[0]
    confirmed = {"outcome": "confirmed", "plan": ask.get("plan", ""),
                 **{k: ask[k] for k in ("order_id", "line_id", "sku", "warehouse", "attempt", "qty")}}
    _, fx2 = ROUTER.on_reply(state, confirmed, VIEW, "t2")
    assert [op["op"] for op in fx2.stock_ops] == ["release"]
    # A release (a drain, an approval) that finds it on its way changes nothing.
    moving, _ = ROUTER.on_order(None, order(), VIEW, "t0")
    assert ROUTER.on_release(moving, VIEW, "t1")[0] is moving
