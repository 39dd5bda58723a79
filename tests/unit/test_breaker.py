"""The surge breaker's math and state machine (pure)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from peakroute.domain.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    Breaker,
    BreakerConfig,
    advance,
    catch_up,
    drain,
    keys_for,
    must_hold,
    observe,
    shard_of,
    surging,
    take_tokens,
    trip,
)

CFG = BreakerConfig(window_s=10, tick_s=1, trip_ratio=4, min_rate=5, warmup_windows=3, calm_windows=1)


def warm(rate: float, ticks: int = 40) -> Breaker:
    b = Breaker("channel:douyin")
    for t in range(ticks):
        b = observe(b, rate, t, CFG, held=0)
    return b


def test_steady_traffic_learns_a_baseline_and_never_trips() -> None:
    b = warm(10)
    assert b.state == CLOSED and abs(b.baseline - 10) < 1e-6


def test_four_times_baseline_trips_three_times_does_not() -> None:
    assert observe(warm(10), 39, 100, CFG, 0).state == CLOSED
    b = observe(warm(10), 40, 100, CFG, 0)
    assert b.state == OPEN and b.trips == 1 and "baseline" in b.reason


def test_minimum_volume_protects_quiet_keys() -> None:
    b = warm(1)
    assert observe(b, 4.9, 100, CFG, 0).state == CLOSED  # 1 -> 4.9 orders/s: below min volume
    assert not surging(b, 4.9, CFG)


def test_no_trip_before_the_baseline_is_trusted() -> None:
    b = warm(10, ticks=5)
    assert observe(b, 100, 6, CFG, 0).state == CLOSED


def test_surge_does_not_teach_the_baseline() -> None:
    b = observe(warm(10), 50, 100, CFG, 0)
    for t in range(5):
        b = observe(b, 50, 101 + t, CFG, 10)
    assert b.state == OPEN and abs(b.baseline - 10) < 1e-6


def test_open_then_calm_window_then_half_open_then_closed_when_drained() -> None:
    b = observe(warm(10), 50, 100, CFG, held=0)
    for t in range(9):
        b = observe(b, 10, 101 + t, CFG, held=30)
        assert b.state == OPEN
    b = observe(b, 10, 110, CFG, held=30)
    assert b.state == HALF_OPEN
    b = observe(b, 10, 111, CFG, held=5)
    assert b.state == HALF_OPEN
    assert observe(b, 10, 112, CFG, held=0).state == CLOSED


def test_half_open_trips_again_if_the_surge_persists() -> None:
    b = drain(observe(warm(10), 50, 100, CFG, 0), 101)
    b = observe(b, 60, 102, CFG, held=10)
    assert b.state == OPEN and b.trips == 2


def test_operator_trip_stays_open_until_an_operator_acts() -> None:
    b = trip(warm(10), 100)
    for t in range(30):
        b = observe(b, 10, 101 + t, CFG, held=3)
    assert b.state == OPEN
    assert drain(b, 200, rate=7).state == HALF_OPEN


def test_token_bucket_limits_the_drain_rate() -> None:
    b = drain(Breaker("k"), 0.0, rate=10)
    released = 0
    for i in range(1, 51):  # 5 s in 0.1 s steps
        b, n = take_tokens(b, i / 10, CFG, wanted=1000)
        released += n
    assert 45 <= released <= 50


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(0.01, 3.0), st.integers(0, 1000)), min_size=1, max_size=60),
       rate=st.floats(0.5, 200))
def test_never_drains_faster_than_the_configured_rate(steps, rate) -> None:
    b = drain(Breaker("k"), 0.0, rate=rate)
    now = 0.0
    released = 0
    for dt, wanted in steps:
        now += dt
        b, n = take_tokens(b, now, CFG, wanted)
        assert 0 <= n <= wanted
        released += n
    assert released <= rate * now + rate  # at most one second of burst


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 300), st.integers(0, 50)), min_size=1, max_size=80))
def test_no_sequence_closes_a_breaker_with_orders_still_held(seq) -> None:
    b = warm(10)
    for t, (rate, held) in enumerate(seq):
        prev = b
        b = observe(b, rate, 100 + t, CFG, held)
        if prev.state != CLOSED and b.state == CLOSED:
            assert held == 0, "a breaker only closes once every held order is released"


def test_keys_and_priority_bypass() -> None:
    assert keys_for("jd", ["A", "B", "A"]) == ["channel:jd", "sku:A", "sku:B"]
    holding = {"sku:B"}
    assert must_hold(holding, "jd", ["A", "B"], priority=4, cfg=CFG) == ["sku:B"]
    assert must_hold(holding, "jd", ["A", "B"], priority=1, cfg=CFG) == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0, 50), min_size=1, max_size=40), st.integers(0, 200), st.floats(0, 60))
def test_catching_up_idle_ticks_is_observing_rate_zero_at_each(history, idle, rate_after) -> None:
    """A closed breaker the tick skipped (its key idle) ends where one observed at every tick would."""
    b = Breaker("sku:S")
    for t, rate in enumerate(history, start=1):
        b = observe(b, rate, t, CFG, held=0)
        b = Breaker(**{**b.to_dict(), "tick": t})
    if b.state != CLOSED:
        return
    every = b
    for t in range(len(history) + 1, len(history) + 1 + idle):
        every = observe(every, 0.0, t, CFG, held=0)
    now_tick = len(history) + idle + 1
    lazy = catch_up(b, now_tick, CFG)
    assert lazy.state == every.state == CLOSED and lazy.ticks_seen == every.ticks_seen
    assert abs(lazy.baseline - every.baseline) <= 1e-9 * max(1.0, every.baseline)
    after_every, after_lazy = observe(every, rate_after, now_tick, CFG, 0), observe(lazy, rate_after, now_tick, CFG, 0)
    assert after_every.state == after_lazy.state, "the same verdict on the next observed rate"


def test_catch_up_leaves_unnumbered_open_and_just_observed_breakers_alone() -> None:
    b = Breaker("sku:S", baseline=10.0, ticks_seen=50, tick=7)
    assert catch_up(b, 8, CFG) == b, "observed at the tick before: nothing skipped"
    assert catch_up(Breaker("sku:S", baseline=10.0, ticks_seen=50), 90, CFG).baseline == 10.0, "tick unknown"
    opened = Breaker("sku:S", state=OPEN, baseline=10.0, ticks_seen=50, tick=7)
    assert catch_up(opened, 90, CFG) == opened, "a breaker not closed is observed at every tick"
    assert catch_up(b, 10, CFG).baseline == 10.0 * (1 - CFG.alpha) ** 2


BREAKERS = st.builds(
    Breaker, key=st.sampled_from(["sku:S", "channel:jd"]), state=st.sampled_from([CLOSED, OPEN, HALF_OPEN]),
    since=st.floats(0, 100), baseline=st.floats(0, 100), ticks_seen=st.integers(0, 100), rate=st.floats(0, 100),
    calm=st.integers(0, 20), drain_rate=st.floats(0, 50), tokens=st.floats(0, 50), last_refill=st.floats(0, 100),
    manual=st.booleans(), trips=st.integers(0, 5), reason=st.text(max_size=5), tick=st.integers(0, 60))


@settings(max_examples=400, deadline=None)
@given(BREAKERS, st.integers(1, 80), st.floats(0, 100), st.floats(100, 200), st.integers(0, 50))
def test_one_tick_is_catch_up_then_observe_then_the_drain(b, tick, rate, now, held) -> None:
    """``advance`` (what a tick does per key, with copies that skip ``__init__``) is the
    composition of the steps, built the ordinary dataclass way."""
    from dataclasses import replace

    step = observe(catch_up(b, tick, CFG), rate, now, CFG, held)
    step, n = take_tokens(step, now, CFG, held)
    got, released = advance(b, tick, rate, now, CFG, held)
    expected = replace(step, tick=tick)
    assert (got, released) == (expected, n)
    assert got.to_dict() == expected.to_dict() and list(got.to_dict()) == list(Breaker("k").to_dict())
    assert Breaker.from_dict(got.to_dict()) == got


def test_stored_breakers_read_back_whatever_fields_they_have() -> None:
    b = Breaker("sku:S", state=OPEN, baseline=3.5, trips=2, tick=9)
    assert Breaker.from_dict(b.to_dict()) == b
    assert Breaker.from_dict({"key": "sku:S", "state": OPEN}) == Breaker("sku:S", state=OPEN), "older: defaults"
    assert Breaker.from_dict({**b.to_dict(), "future_field": 1}) == b, "newer: unknown fields ignored"
    assert list(Breaker.from_dict({"tick": 3, "key": "k"}).to_dict()) == list(b.to_dict()), "field order kept"


def test_a_sku_breaker_goes_with_its_stock_partition_and_a_channel_with_the_leader() -> None:
    from peakroute.agents.common import sku_partition

    for i in range(200):
        sku = f"SKU-{i}"
        assert shard_of(f"sku:{sku}", 6) == str(sku_partition(sku, 6))
        assert shard_of(f"sku:{sku}", 12) == str(sku_partition(sku, 12))
    assert shard_of("channel:douyin", 6) == shard_of("channel:jd", 12) == "c"


def test_a_worker_ticks_the_shards_of_its_stock_partitions_and_the_leader_the_channels() -> None:
    from types import SimpleNamespace

    from faust.types import TP

    from peakroute.agents.breaker import owned_shards

    def app(actives: object, leader: bool) -> SimpleNamespace:
        def assigned() -> object:
            if isinstance(actives, Exception):
                raise actives
            return actives

        return SimpleNamespace(assignor=SimpleNamespace(assigned_actives=assigned), is_leader=lambda: leader)

    mine = {TP("stock-ops", 4), TP("stock-ops", 1), TP("raw.jd", 0), TP("stock-replies", 2)}
    assert owned_shards(app(mine, leader=False), "stock-ops") == ["1", "4"], "its stock partitions only"
    assert owned_shards(app(mine, leader=True), "stock-ops") == ["1", "4", "c"], "the leader: the channels too"
    assert owned_shards(app(RuntimeError("not assigned yet"), leader=False), "stock-ops") == []
    assert owned_shards(app(set(), leader=True), "stock-ops") == ["c"]
