"""The SKU ledger (pure): never oversell, idempotent holds, all-or-nothing per line."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from peakroute.domain.ledger import Ledger


def fresh(on_hand: int = 10, safety: int = 0) -> Ledger:
    led = Ledger({}, {})
    led.set_stock("SKU-A", "WH-1", on_hand=on_hand, safety=safety)
    return led


def test_reserve_confirms_until_stock_runs_out() -> None:
    led = fresh(3)
    assert led.reserve("o1", "1", "SKU-A", "WH-1", 2, 1, "t1").outcome == "confirmed"
    assert led.reserve("o2", "1", "SKU-A", "WH-1", 2, 1, "t2").outcome == "refused"
    assert led.reserve("o3", "1", "SKU-A", "WH-1", 1, 1, "t3").outcome == "confirmed"
    assert led.available("SKU-A", "WH-1") == 0


def test_same_request_twice_holds_once() -> None:
    led = fresh(5)
    for _ in range(3):
        assert led.reserve("o1", "1", "SKU-A", "WH-1", 2, 1, "t").outcome == "confirmed"
    assert led.level("SKU-A", "WH-1") == (5, 2, 0)


def test_safety_stock_is_never_promised() -> None:
    led = fresh(5, safety=2)
    assert led.reserve("o1", "1", "SKU-A", "WH-1", 4, 1, "t").outcome == "refused"
    assert led.reserve("o1", "1", "SKU-A", "WH-1", 3, 1, "t").outcome == "confirmed"


def test_release_gives_back_only_what_was_held_and_only_once() -> None:
    led = fresh(5)
    led.reserve("o1", "1", "SKU-A", "WH-1", 2, 1, "t")
    assert led.release("o1", "1") is not None
    assert led.release("o1", "1") is None
    assert led.release("never", "1") is None
    assert led.level("SKU-A", "WH-1") == (5, 0, 0)


def test_release_of_an_older_attempt_does_not_touch_a_newer_hold() -> None:
    led = fresh(5)
    led.reserve("o1", "1", "SKU-A", "WH-1", 2, 2, "t")
    assert led.release("o1", "1", attempt=1) is None
    assert led.reserve("o1", "1", "SKU-A", "WH-1", 2, 1, "t").outcome == "stale"
    assert led.level("SKU-A", "WH-1") == (5, 2, 0)


def test_ship_turns_hold_into_shipment() -> None:
    led = fresh(5)
    led.reserve("o1", "1", "SKU-A", "WH-1", 2, 1, "t")
    assert led.ship("o1", "1") is not None
    assert led.ship("o1", "1") is None
    assert led.level("SKU-A", "WH-1") == (3, 0, 0)
    # The shipped hold stays as a tombstone: a reservation or release read again changes nothing.
    assert led.reserve("o1", "1", "SKU-A", "WH-1", 2, 1, "t").outcome == "confirmed"
    assert led.reserve("o1", "1", "SKU-A", "WH-1", 2, 2, "t").outcome == "stale"
    assert led.release("o1", "1") is None
    assert led.level("SKU-A", "WH-1") == (3, 0, 0)
    assert led.level("SKU-A", "WH-1") == (3, 0, 0)


def test_correction_below_reserved_evicts_latest_paid_first() -> None:
    led = fresh(10)
    for i in range(5):
        led.reserve(f"o{i}", "1", "SKU-A", "WH-1", 2, 1, f"2026-11-11T00:00:0{i}Z")
    evicted = led.set_stock("SKU-A", "WH-1", on_hand=5)
    assert [h.order_id for h in evicted] == ["o4", "o3", "o2"]
    on_hand, reserved, safety = led.level("SKU-A", "WH-1")
    assert reserved <= on_hand - safety


ops = st.lists(st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, 7), st.integers(1, 2), st.sampled_from(["WH-1", "WH-2"]),
              st.integers(-1, 6), st.integers(1, 3)),
    st.tuples(st.just("release"), st.integers(0, 7), st.integers(1, 2), st.none(), st.none(), st.none()),
    st.tuples(st.just("ship"), st.integers(0, 7), st.integers(1, 2), st.none(), st.none(), st.none()),
    st.tuples(st.just("stock"), st.none(), st.none(), st.sampled_from(["WH-1", "WH-2"]), st.integers(0, 12),
              st.integers(0, 3)),
    st.tuples(st.just("delta"), st.none(), st.none(), st.sampled_from(["WH-1", "WH-2"]), st.integers(-5, 5), st.none()),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_invariant_holds_for_any_sequence_and_replays_change_nothing(seq) -> None:
    led = Ledger({}, {})
    for op, o, line, wh, n, extra in seq:
        if op == "reserve":
            before = (dict(led.levels), dict(led.holds))
            r = led.reserve(f"o{o}", str(line), "SKU-A", wh, n, extra, f"t{o}")
            after = (dict(led.levels), dict(led.holds))
            # Applying the very same request again is a no-op.
            r2 = led.reserve(f"o{o}", str(line), "SKU-A", wh, n, extra, f"t{o}")
            assert (dict(led.levels), dict(led.holds)) == after
            if r.outcome == "confirmed":
                assert r2.outcome == "confirmed"
            del before
        elif op == "release":
            led.release(f"o{o}", str(line))
        elif op == "ship":
            led.ship(f"o{o}", str(line))
        elif op == "stock":
            led.set_stock("SKU-A", wh, on_hand=n, safety=extra)
        else:
            led.set_stock("SKU-A", wh, delta=n)
        for w in ("WH-1", "WH-2"):
            on_hand, reserved, safety = led.level("SKU-A", w)
            assert 0 <= reserved <= max(0, on_hand - safety), (w, led.level("SKU-A", w))
            held = sum(h["q"] for h in led.holds.values() if h["w"] == w and "x" not in h)
            assert held == reserved, "reserved is exactly the sum of live holds"


# -- a kill -9 in the middle of a batch's table writes ------------------------------------------

class Recording(dict):
    """A store that remembers which keys a batch wrote (like BatchWrites: one write per key)."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.written: set = set()

    def __setitem__(self, k, v) -> None:
        self.written.add(k)
        super().__setitem__(k, v)

    def __delitem__(self, k) -> None:
        self.written.add(k)
        super().__delitem__(k)


def _sums_agree(led: Ledger) -> None:
    from peakroute.domain.ledger import reserved_drift

    assert reserved_drift(led.levels, led.holds) == {}
    for level in led.levels.values():
        on_hand, reserved, safety = level[:3]
        assert reserved <= on_hand - safety


#: (operation, order, is this a new attempt of the order?): as the order side sends them — a line's SKU and
#: quantity never change, its attempts only go up.
OPS = st.lists(st.tuples(st.sampled_from(["reserve", "reserve", "release", "ship"]), st.integers(0, 7), st.booleans()),
               min_size=1, max_size=25)


@settings(max_examples=300, deadline=None)
@given(history=OPS, batch=OPS, survived=st.lists(st.booleans(), min_size=40, max_size=40))
def test_a_batch_torn_by_a_crash_lands_exactly_after_rederiving_reserved(history, batch, survived) -> None:
    """Whatever subset of a batch's level and hold writes reached the changelog before a kill -9,
    re-deriving `reserved` from the holds and re-applying the batch (faust re-reads it: offsets are
    committed only after the writes are flushed) gives the state the batch would have given
    without the crash — when stock is plentiful — and never breaks reserved == sum(holds).
    Shipments included: on-hand drops exactly once per shipped line."""
    from peakroute.domain.ledger import apply_ops, reserved_drift

    attempts: dict[int, int] = {}

    def ops(seq):
        out = []
        for kind, o, bump in seq:
            attempts[o] = attempts.get(o, 1) + (1 if bump else 0)
            out.append({"op": kind, "order_id": f"o{o}", "line_id": "1", "sku": ("SKU-A", "SKU-B")[o % 2], "warehouse": "WH-1",
                        "qty": 1 + o % 3, "attempt": attempts[o], "paid_at": f"t{o}", "reply_to": 0})
        return out

    base = Ledger({}, {})
    for sku in ("SKU-A", "SKU-B"):
        base.set_stock(sku, "WH-1", on_hand=1000)
    apply_ops(base, ops(history), 1)
    batch_ops = ops(batch)
    # The batch, run to completion: what it wrote.
    done = Ledger(Recording(base.levels), Recording(base.holds))
    apply_ops(done, batch_ops, 2)
    # The crash: only some of those writes reached the changelog.
    torn = Ledger(dict(base.levels), dict(base.holds))
    writes = [(torn.levels, done.levels, k) for k in sorted(done.levels.written)] + \
             [(torn.holds, done.holds, k) for k in sorted(done.holds.written)]
    for (target, source, key), kept in zip(writes, survived + [True] * len(writes), strict=False):
        if kept:
            if key in source:
                target[key] = source[key]
            else:
                target.pop(key, None)
    # Recovery: re-derive, then the batch is read again.
    for key, reserved in reserved_drift(torn.levels, torn.holds).items():
        torn.set_reserved(key, reserved)
    _sums_agree(torn)
    apply_ops(torn, batch_ops, 2)
    _sums_agree(torn)
    assert dict(torn.holds) == dict(done.holds)
    assert {k: v[:3] for k, v in torn.levels.items()} == {k: v[:3] for k, v in done.levels.items()}


def test_reserved_drift_names_only_levels_that_disagree_with_their_holds() -> None:
    from peakroute.domain.ledger import reserved_drift

    led = fresh(10)
    led.reserve("o1", "1", "SKU-A", "WH-1", 2, 1, "t")
    led.set_stock("SKU-B", "WH-1", on_hand=5)
    assert reserved_drift(led.levels, led.holds) == {}
    led.levels["SKU-A|WH-1"] = [10, 5, 0]  # the level's write landed twice (or the hold's never did)
    led.levels["SKU-B|WH-1"] = [5, 1, 0]
    assert reserved_drift(led.levels, led.holds) == {"SKU-A|WH-1": 2, "SKU-B|WH-1": 0}
    del led.levels["SKU-A|WH-1"]  # the hold landed, its level did not
    assert reserved_drift(led.levels, led.holds) == {"SKU-A|WH-1": 2, "SKU-B|WH-1": 0}


def test_an_inventory_change_read_again_after_a_crash_is_applied_once() -> None:
    """Deltas (a receipt of +100) are not idempotent: the level remembers the stock-ops position of
    the last change it took, in the same record, so re-reading the message changes nothing."""
    from peakroute.domain.ledger import apply_ops

    led = Ledger({}, {})
    receipt = [{"op": "stock", "sku": "SKU-A", "warehouse": "WH-1", "delta": 100}]
    apply_ops(led, [{"op": "stock", "sku": "SKU-A", "warehouse": "WH-1", "on_hand": 10, "safety": 1}], 41)
    apply_ops(led, receipt, 42)
    apply_ops(led, receipt, 42)  # the batch is read again after a kill -9
    assert led.level("SKU-A", "WH-1") == (110, 0, 1)
    apply_ops(led, receipt, 43)  # a second receipt (a later message)
    assert led.level("SKU-A", "WH-1") == (210, 0, 1)
    # Reservations keep the watermark; two changes to one level in one message both apply, once.
    led.reserve("o1", "1", "SKU-A", "WH-1", 5, 1, "t")
    twice = [{"op": "stock", "sku": "SKU-A", "warehouse": "WH-1", "delta": -1},
             {"op": "stock", "sku": "SKU-A", "warehouse": "WH-1", "delta": -2}]
    for _ in range(2):
        apply_ops(led, twice, 44)
    assert led.level("SKU-A", "WH-1") == (207, 5, 1)
    assert led.applied_at("SKU-A", "WH-1") == (44, 1)
    # Without a source position (tests, tools) every change applies.
    apply_ops(led, receipt)
    assert led.level("SKU-A", "WH-1") == (307, 5, 1)


def test_a_wms_message_forwarded_twice_is_applied_once() -> None:
    """The inventory stage forwards a WMS message at least once: a worker that dies after
    forwarding and before committing forwards it again, as a new stock-ops message (a new
    position).  The level remembers, per inventory partition, the last WMS message it took."""
    from peakroute.domain.ledger import apply_ops

    led = Ledger({}, {})

    def wms(partition: int, offset: int, **change: int) -> list[dict]:
        return [{"op": "stock", "sku": "SKU-A", "warehouse": "WH-1", **change, "src": [partition, offset]}]

    apply_ops(led, wms(0, 7, on_hand=10, safety=1), 41)
    apply_ops(led, wms(0, 8, delta=100), 42)
    apply_ops(led, wms(0, 8, delta=100), 57)  # forwarded again by the next owner of inventory[0]
    assert led.level("SKU-A", "WH-1") == (110, 0, 1)
    apply_ops(led, wms(3, 2, delta=5), 58)  # another inventory partition has its own sequence
    apply_ops(led, wms(0, 9, delta=-10), 59)
    apply_ops(led, wms(3, 2, delta=5), 60)
    assert led.level("SKU-A", "WH-1") == (105, 0, 1)
    assert (led.inventory_applied("SKU-A", "WH-1", 0), led.inventory_applied("SKU-A", "WH-1", 3)) == (9, 2)
    # Every other write of the level keeps the watermarks.
    led.reserve("o1", "1", "SKU-A", "WH-1", 5, 1, "t", position=(61, 0))
    led.set_reserved("SKU-A|WH-1", 5)
    led.mark_applied("SKU-A", "WH-1", (62, 0))
    led.release("o1", "1")
    assert led.inventory_applied("SKU-A", "WH-1", 0) == 9 and led.applied_at("SKU-A", "WH-1") == (62, 0)
    apply_ops(led, wms(0, 9, delta=-10), 63)
    assert led.level("SKU-A", "WH-1") == (105, 0, 1)


def test_a_torn_shipment_confirmation_lands_exactly_once() -> None:
    """The two records a shipment writes (the level: on-hand and reserved down; the hold: now a
    tombstone) can land one without the other when a worker is killed; the batch is then read
    again.  Each way round, on-hand ends exactly one shipment lower."""
    from peakroute.domain.ledger import apply_ops, reserved_drift

    ship = [{"op": "ship", "order_id": "o1", "line_id": "1"}]

    def reserved_then_shipped() -> tuple[Ledger, Ledger]:
        before = fresh(10)
        before.reserve("o1", "1", "SKU-A", "WH-1", 3, 1, "t")
        after = Ledger(dict(before.levels), dict(before.holds))
        apply_ops(after, ship, 50)
        assert after.level("SKU-A", "WH-1") == (7, 0, 0)
        return before, after

    def recover_and_reread(led: Ledger) -> Ledger:
        for key, reserved in reserved_drift(led.levels, led.holds).items():
            led.set_reserved(key, reserved)
        apply_ops(led, ship, 50)
        apply_ops(led, ship, 61)  # and the WMS's confirmation re-sent, at a later position
        return led

    before, after = reserved_then_shipped()
    # Only the level landed: the hold is still live (and was counted back into reserved).
    torn = recover_and_reread(Ledger(dict(after.levels), dict(before.holds)))
    assert torn.level("SKU-A", "WH-1") == (7, 0, 0) and torn.holds == after.holds
    # Only the tombstone landed: the level still has the units on hand and reserved.
    torn = recover_and_reread(Ledger(dict(before.levels), dict(after.holds)))
    assert torn.level("SKU-A", "WH-1") == (7, 0, 0) and torn.holds == after.holds
    # Both landed (or neither): the same.
    assert recover_and_reread(Ledger(dict(after.levels), dict(after.holds))).level("SKU-A", "WH-1") == (7, 0, 0)
    assert recover_and_reread(Ledger(dict(before.levels), dict(before.holds))).level("SKU-A", "WH-1") == (7, 0, 0)


# -- a torn batch read again, together with the batches before it ----------------------------------
# (The whole protocol under such crashes: tests/unit/test_reservation_protocol.py, stock_crash_rate.)

def _reserve(order: str, qty: int = 2) -> dict:
    return {"op": "reserve", "order_id": order, "line_id": "1", "sku": "SKU-A", "warehouse": "WH-1", "qty": qty,
            "attempt": 1, "paid_at": f"t-{order}", "reply_to": 0, "plan": f"plan-{order}"}


def _recover(levels: dict, holds: dict) -> Ledger:
    """A new owner's ledger from the records that landed, ``reserved`` re-derived from its holds."""
    from peakroute.domain.ledger import reserved_drift

    led = Ledger(dict(levels), dict(holds))
    for key, reserved in reserved_drift(led.levels, led.holds).items():
        led.set_reserved(key, reserved)
    return led


def test_a_torn_batch_read_again_can_refuse_a_line_it_had_confirmed() -> None:
    """Why the order side takes a refusal of a line it holds as a lost hold (fulfillment.on_reply):
    a batch read again on a torn state is not the batch that ran.  Here X held 2 of 4 units; the batch
    confirmed A, released X and gave X's units to Y; only Y's hold (and the level) landed.  Read
    again, X's old hold is still there and Y's new one too: A is refused, and the SKU owner's word
    for A has changed."""
    from peakroute.domain.ledger import apply_ops

    led = fresh(0)
    apply_ops(led, [{"op": "stock", "sku": "SKU-A", "warehouse": "WH-1", "on_hand": 4}, _reserve("X")], 1)
    before = (dict(led.levels), dict(led.holds))
    batch = [_reserve("A"), {"op": "release", "order_id": "X", "line_id": "1", "attempt": 1, "plan": "plan-X"},
             _reserve("Y")]
    first, _ = apply_ops(led, batch, 2)
    assert [(r["order_id"], r["outcome"]) for r in first] == [("A", "confirmed"), ("Y", "confirmed")]
    torn = _recover({**before[0], **led.levels}, {**before[1], "Y|1": led.holds["Y|1"]})
    again, _ = apply_ops(torn, batch, 2)
    assert [(r["order_id"], r["outcome"]) for r in again] == [("A", "refused"), ("Y", "confirmed")]
    assert torn.level("SKU-A", "WH-1") == (4, 2, 0) and set(torn.holds) == {"Y|1"}


def test_an_eviction_whose_hold_records_were_lost_is_evicted_again_when_read_again() -> None:
    """A stock correction evicted a hold; its level (new on-hand, and the position of the change)
    landed, the hold's deletion did not.  Re-derived, more is held than on hand; the correction is
    not applied twice, but it evicts again and says so (the order side releases what it was told
    was evicted, so the old and the new answer agree)."""
    from peakroute.domain.ledger import apply_ops

    led = fresh(0)
    apply_ops(led, [{"op": "stock", "sku": "SKU-A", "warehouse": "WH-1", "on_hand": 4}, _reserve("A"), _reserve("B")], 1)
    holds_before = dict(led.holds)
    fix = [{"op": "stock", "sku": "SKU-A", "warehouse": "WH-1", "on_hand": 2}]
    first, _ = apply_ops(led, fix, 2)
    assert [(r["order_id"], r["outcome"]) for r in first] == [("B", "evicted")]
    torn = _recover(led.levels, holds_before)
    assert torn.level("SKU-A", "WH-1") == (2, 4, 0)
    again, _ = apply_ops(torn, fix, 2)
    assert [(r["order_id"], r["outcome"]) for r in again] == [("B", "evicted")]
    assert torn.level("SKU-A", "WH-1") == (2, 2, 0) and set(torn.holds) == {"A|1"}
    # An older change read again before a later one (a shipment, here) evicts nothing: the
    # shipment read after it takes its units off.
    led = fresh(0)
    apply_ops(led, [{"op": "stock", "sku": "SKU-A", "warehouse": "WH-1", "on_hand": 5}], 1)
    apply_ops(led, [_reserve("A", 3)], 2)
    holds_before = dict(led.holds)
    apply_ops(led, [{"op": "ship", "order_id": "A", "line_id": "1"}], 3)
    torn = _recover(led.levels, holds_before)  # the level (on-hand 2) landed, the tombstone did not
    replies = []
    for offset, ops in ((1, [{"op": "stock", "sku": "SKU-A", "warehouse": "WH-1", "on_hand": 5}]), (2, [_reserve("A", 3)]),
                        (3, [{"op": "ship", "order_id": "A", "line_id": "1"}])):
        replies += apply_ops(torn, ops, offset)[0]
    assert [r["outcome"] for r in replies] == ["confirmed", "shipped"]
    assert torn.level("SKU-A", "WH-1") == (2, 0, 0) and "x" in torn.holds["A|1"]


def test_a_torn_shipment_keeps_its_units_reserved_until_it_is_read_again() -> None:
    """The shipment's tombstone landed, its level (on-hand down) did not.  Re-derived ``reserved``
    still counts the tombstone, so a reservation read again before the shipment is refused as it
    was the first time — not granted the shipped units."""
    from peakroute.domain.ledger import apply_ops

    led = fresh(0)
    apply_ops(led, [{"op": "stock", "sku": "SKU-A", "warehouse": "WH-1", "on_hand": 3}], 0)
    apply_ops(led, [_reserve("A")], 1)
    assert apply_ops(led, [_reserve("B")], 2)[0][0]["outcome"] == "refused"
    levels_before = dict(led.levels)
    apply_ops(led, [{"op": "ship", "order_id": "A", "line_id": "1"}], 3)
    torn = _recover(levels_before, led.holds)
    assert torn.level("SKU-A", "WH-1") == (3, 2, 0)
    replies = apply_ops(torn, [_reserve("A")], 1)[0] + apply_ops(torn, [_reserve("B")], 2)[0] + \
        apply_ops(torn, [{"op": "ship", "order_id": "A", "line_id": "1"}], 3)[0]
    assert [(r["order_id"], r["outcome"]) for r in replies] == [("A", "confirmed"), ("B", "refused")]
    assert torn.level("SKU-A", "WH-1") == (1, 0, 0)
