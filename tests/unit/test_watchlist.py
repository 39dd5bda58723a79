"""The timers' watchlist (pure): which in-flight orders the retry/expiry and held-repair timers see."""

from __future__ import annotations

from peakroute.domain.fulfillment import BACKORDERED, HELD, RESERVING, ROUTED, WAITING, Watchlist


def state(status: str, *, p: int = 3, since: str | None = "2026-11-11T00:00:00.000Z", unpaid: bool = False,
          expires: str | None = None) -> dict:
    order = {"status": "pending_payment" if unpaid else "paid"}
    if expires:
        order["expires_at"] = expires
    return {"status": status, "p": p, "since": since, "order": order}


def fresh() -> Watchlist:
    w = Watchlist()
    w.rebuild([])
    return w


def test_reserving_orders_are_retried_only_when_stale() -> None:
    w = fresh()
    w.update("o1", state(RESERVING, since="2026-11-11T00:00:00.000Z"))
    w.update("o2", state(RESERVING, since="2026-11-11T00:00:30.000Z"))
    assert w.due("2026-11-11T00:00:40.000Z", "2026-11-11T00:00:20.000Z") == [(3, {"outcome": "retry", "order_id": "o1"})]


def test_a_reservation_without_a_start_time_is_never_stale() -> None:
    w = fresh()
    w.update("o1", state(RESERVING, since=None))
    assert w.due("2999-01-01T00:00:00.000Z", "2999-01-01T00:00:00.000Z") == []


def test_leaving_reserving_drops_the_order() -> None:
    w = fresh()
    w.update("o1", state(RESERVING))
    for final in (ROUTED, BACKORDERED, WAITING):
        w.update("o1", state(final))
        assert "o1" not in w.reserving
    w.update("o1", state(RESERVING))
    w.update("o1", None)
    assert not w.reserving and not w.expiring and not w.held


def test_unpaid_orders_holding_stock_expire_on_time() -> None:
    w = fresh()
    w.update("o1", state(ROUTED, unpaid=True, expires="2026-11-11T00:10:00.000Z", p=1))
    w.update("o2", state(WAITING, unpaid=True, expires="2026-11-11T00:05:00.000Z"))  # holds no stock
    w.update("o3", state(ROUTED, expires="2026-11-11T00:05:00.000Z"))  # paid: never expires
    assert w.due("2026-11-11T00:09:59.000Z", "") == []
    assert w.due("2026-11-11T00:10:01.000Z", "") == [(1, {"outcome": "expire", "order_id": "o1"})]


def test_held_orders_are_listed_with_their_partition() -> None:
    w = fresh()
    w.update("o1", state(HELD, p=5))
    assert w.held == {"o1": 5}
    w.update("o1", state(RESERVING))
    assert w.held == {}


def test_rebuild_is_one_scan_and_waits_for_recovery() -> None:
    table = {"o1": state(RESERVING), "o2": state(HELD), "o3": state(ROUTED)}
    w = Watchlist()
    assert w.stale
    # A timer right after a rebalance: the table may still be recovering, so it waits.
    assert not w.ensure(table, in_recovery=True, now=100.0)
    w.mark_stale(100.0)
    assert not w.ensure(table, now=101.0)  # too soon after the assignment: recovery may not have begun
    assert w.ensure(table, now=106.0)
    assert set(w.reserving) == {"o1"} and set(w.held) == {"o2"}
    w.mark_stale(200.0)
    assert w.ensure(table, recovered=True, now=200.0)  # an agent's batch: recovery is done
