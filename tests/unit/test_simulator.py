"""The peak-sale simulator: deterministic, realistic channel payloads, and the open-loop runner.

No Kafka here: the runner is exercised against a small fake producer (plumbing only).  When the
channel normalizer is importable, every simulated payload must normalize without rejection to the
status its event kind implies, so the simulator and the router agree on the four channel formats.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from peakroute.config import CHANNELS
from peakroute.connectors.payloads import (
    OrderIdAllocator,
    SimOrder,
    beijing_time,
    build_payload,
    yuan,
)
from peakroute.connectors.simulator import (
    CHANNEL_MIX,
    DOUBLE11_EPOCH,
    EVENT_KINDS,
    PeakSaleSimulator,
    SimEvent,
    SimStats,
    SurgeSpec,
    parse_surge,
    run_simulation,
)
from peakroute.domain.catalog import load_catalog
from peakroute.streams.topics import raw_topic

_SHARED = Path(__file__).resolve().parents[3] / "shared" / "channel-samples"
SAMPLES = _SHARED if _SHARED.is_dir() else Path(__file__).resolve().parents[2] / "peakroute" / "data" / "samples"
CATALOG = load_catalog()
RATE, DURATION = 150.0, 60.0


def _events(**kwargs: Any) -> list[SimEvent]:
    args: dict[str, Any] = {"rate": RATE, "duration_s": DURATION, "seed": 11, "catalog": CATALOG,
                            "pay_timeout_s": 20}
    args.update(kwargs)
    return list(PeakSaleSimulator(**args).events())


@pytest.fixture(scope="module")
def run() -> list[SimEvent]:
    """One minute at 150 orders/s with a 20 s payment timeout, so every follow-up kind occurs."""
    return _events()


@pytest.fixture(scope="module")
def surge_run() -> tuple[PeakSaleSimulator, list[SimEvent]]:
    sim = PeakSaleSimulator(RATE, DURATION, 5, CATALOG, surge=parse_surge("start=20,duration=20"))
    return sim, list(sim.events())


# ---------------------------------------------------------------------------------------------
# Determinism, volume, mix
# ---------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_events_and_other_seed_differs() -> None:
    a = _events(duration_s=10.0, seed=3)
    b = _events(duration_s=10.0, seed=3)
    c = _events(duration_s=10.0, seed=4)
    assert a == b
    assert [e.payload for e in a] == [e.payload for e in b]
    assert [e.payload for e in a[:50]] != [e.payload for e in c[:50]]
    assert {e.key for e in a}.isdisjoint({e.key for e in c})


def test_events_are_in_time_order_within_the_run(run: list[SimEvent]) -> None:
    ats = [e.at for e in run]
    assert ats == sorted(ats)
    assert 0 <= ats[0] and ats[-1] < DURATION
    assert {e.kind for e in run} == set(EVENT_KINDS)


def test_new_order_count_matches_rate_times_duration(run: list[SimEvent]) -> None:
    new = sum(e.kind == "new" for e in run)
    expected = RATE * DURATION
    assert abs(new - expected) < 5 * expected ** 0.5  # Poisson arrivals: within 5 sigma
    # Follow-ups come on top of the new orders, in the advertised proportions.
    kinds = Counter(e.kind for e in run)
    assert 0.005 * new < kinds["cancelled"] < 0.04 * new
    assert 0.015 * new < kinds["resend"] < 0.05 * new
    unpaid_new = sum(e.kind == "new" and e.status == "pending_payment" for e in run)
    assert 0.06 * new < unpaid_new < 0.10 * new
    assert kinds["paid"] > kinds["expired"] > 0


def test_channel_mix_within_tolerance(run: list[SimEvent]) -> None:
    new = [e for e in run if e.kind == "new"]
    counts = Counter(e.channel for e in new)
    for channel, share in CHANNEL_MIX.items():
        assert abs(counts[channel] / len(new) - share) < 0.025, (channel, counts)


def test_order_shapes_are_realistic(run: list[SimEvent]) -> None:
    orders = [e.order for e in run if e.kind == "new"]
    assert all(o is not None for o in orders)
    sold = [line for o in orders for line in o.lines if not line.gift]  # type: ignore[union-attr]
    line_counts = Counter(sum(not line.gift for line in o.lines) for o in orders)  # type: ignore[union-attr]
    assert set(line_counts) <= {1, 2, 3, 4, 5}
    assert (line_counts[1] + line_counts[2]) / len(orders) > 0.75
    assert line_counts[1] > line_counts[2] > line_counts[3]
    qtys = Counter(line.qty for line in sold)
    assert set(qtys) <= {1, 2, 3} and qtys[1] / len(sold) > 0.7
    for o in orders:
        skus = [line.sku for line in o.lines]  # type: ignore[union-attr]
        assert len(skus) == len(set(skus)), "SKUs are distinct within an order"
    # Zipf popularity: the head SKUs are hot, the tail is not.
    popularity = Counter(line.sku for line in sold).most_common()
    assert popularity[0][1] > 0.15 * len(sold)
    assert sum(n for _, n in popularity[:3]) > 0.35 * len(sold)
    assert popularity[0][1] > 10 * popularity[-1][1]
    # 满减 discounts happen, notes sometimes, and some notes ask for 加急.
    assert 0.2 < sum(o.discount_fen > 0 for o in orders) / len(orders) < 0.8  # type: ignore[union-attr]
    notes = [o.buyer_note + o.merchant_note for o in orders]  # type: ignore[union-attr]
    assert 0.05 < sum(bool(n) for n in notes) / len(orders) < 0.3
    assert any("加急" in n for n in notes)
    assert any(ord(ch) > 0xFFFF for n in notes for ch in n), "emoji appear in notes"
    # Buyers come from every populous province, weighted by population.
    provinces = Counter(o.province.code for o in orders)  # type: ignore[union-attr]
    assert provinces["44"] > provinces["11"] > provinces["54"]
    assert len(provinces) >= 25


# ---------------------------------------------------------------------------------------------
# Follow-ups
# ---------------------------------------------------------------------------------------------


def test_follow_ups_reference_earlier_orders(run: list[SimEvent]) -> None:
    first: dict[tuple[str, str], SimEvent] = {}
    last: dict[tuple[str, str], SimEvent] = {}
    for e in run:
        key = (e.channel, e.key)
        if e.kind == "new":
            assert key not in first, "a new order never reuses an order id"
            first[key] = e
            last[key] = e
            continue
        assert key in first, f"{e.kind} for an order never sent"
        assert e.at > first[key].at
        origin = first[key].order
        assert origin is not None and e.order is not None
        if e.kind == "resend":
            continue
        prev = last[key].order
        assert prev is not None
        assert e.order.updated > prev.updated, "each change carries a newer modification time"
        if e.kind == "paid":
            assert prev.status == "pending_payment" and e.status == "paid"
            assert e.order.paid is not None and e.order.paid > e.order.created
        elif e.kind == "expired":
            assert prev.status == "pending_payment" and e.status == "cancelled"
            assert e.order.paid is None
            assert e.at == pytest.approx(first[key].at + origin.expire_s)
        elif e.kind == "cancelled":
            assert prev.status == "paid" and e.status == "cancelled" and e.order.paid is not None
        elif e.kind == "address_change":
            assert prev.status == "paid" and e.status == "paid"
            assert (e.order.city, e.order.district) != (prev.city, prev.district)
            assert e.order.lines == prev.lines
        last[key] = e


def test_resend_is_byte_identical_to_an_earlier_payload(run: list[SimEvent]) -> None:
    sent: dict[tuple[str, str], set[bytes]] = defaultdict(set)
    resends = 0
    for e in run:
        if e.kind == "resend":
            assert e.payload in sent[(e.channel, e.key)]
            resends += 1
        sent[(e.channel, e.key)].add(e.payload)
    assert resends > 0


def test_follow_ups_after_the_end_are_dropped() -> None:
    events = _events(duration_s=5.0, pay_timeout_s=300)
    assert all(e.at < 5.0 for e in events)
    assert not any(e.kind == "expired" for e in events)


# ---------------------------------------------------------------------------------------------
# Surge
# ---------------------------------------------------------------------------------------------


def test_surge_raises_channel_and_sku_share_in_its_window(
    surge_run: tuple[PeakSaleSimulator, list[SimEvent]],
) -> None:
    sim, events = surge_run
    assert sim.surge_window == (20.0, 40.0)
    assert sim.surge_sku == "SKU-LIPSTICK-07"
    new = [e for e in events if e.kind == "new"]
    inside = [e for e in new if 20.0 <= e.at < 40.0]
    outside = [e for e in new if not 20.0 <= e.at < 40.0]

    def douyin_share(es: list[SimEvent]) -> float:
        return sum(e.channel == "douyin" for e in es) / len(es)

    def sku_share(es: list[SimEvent]) -> float:
        lines = [line for e in es for line in e.order.lines if not line.gift]  # type: ignore[union-attr]
        return sum(line.sku == "SKU-LIPSTICK-07" for line in lines) / len(lines)

    assert douyin_share(outside) == pytest.approx(0.20, abs=0.03)
    assert douyin_share(inside) == pytest.approx(5 * 0.2 / (1 + 4 * 0.2), abs=0.04)  # 0.556
    assert sku_share(inside) > 4 * sku_share(outside)
    # The surge adds Douyin orders on top of the base rate.
    assert len(new) == pytest.approx(sim.expected_new_orders(), rel=0.05)
    assert len(inside) / 20.0 > 1.6 * len(outside) / 40.0


def test_default_surge_is_clipped_to_the_run() -> None:
    sim = PeakSaleSimulator(10, 100, 1, CATALOG, surge=SurgeSpec())
    assert sim.surge_window == (30.0, 90.0)
    assert PeakSaleSimulator(10, 50, 1, CATALOG, surge=SurgeSpec()).surge_window == (15.0, 50.0)


def test_parse_surge_text_forms() -> None:
    assert parse_surge("") == SurgeSpec() == parse_surge("default") == parse_surge(None)
    spec = parse_surge("channel=jd,factor=3,start=10,duration=45,sku=SKU-PHONE-128,sku_factor=8")
    assert spec == SurgeSpec("jd", 3.0, 10.0, 45.0, "SKU-PHONE-128", 8.0)
    assert parse_surge(" factor = 2 , start=50% ").window(200) == (100.0, 160.0)
    off = parse_surge("off")
    assert off.factor == 1 and off.sku_factor == 1


@pytest.mark.parametrize("text, fragment", [
    ("channel=taobao", "unknown channel"),
    ("factor=fast", "not a number"),
    ("factor=-2", "non-negative"),
    ("duration=0", "positive"),
    ("start=150%", "between 0% and 100%"),
    ("speed=3", "unknown key"),
    ("factor", "key=value"),
    ("factor=2,factor=3", "twice"),
    ("factor=nan", "non-negative"),
])
def test_parse_surge_rejects_bad_text(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_surge(text)


def test_surge_sku_must_be_a_sellable_catalog_sku() -> None:
    with pytest.raises(ValueError, match="not in the catalog"):
        PeakSaleSimulator(10, 10, 1, CATALOG, surge=parse_surge("sku=SKU-NOPE"))
    with pytest.raises(ValueError, match="gift"):
        PeakSaleSimulator(10, 10, 1, CATALOG, surge=parse_surge("sku=SKU-TOTE-BAG"))


# ---------------------------------------------------------------------------------------------
# Payloads: catalog, formats, ids
# ---------------------------------------------------------------------------------------------


def _lines_of(channel: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    if channel == "tmall":
        return doc["trade_fullinfo_get_response"]["trade"]["orders"]["order"]
    if channel == "jd":
        return doc["itemInfoList"]
    if channel == "douyin":
        return doc["data"]["shop_order_detail"]["sku_order_list"]
    return doc["order"]["order_detail"]["product_infos"]


_SKU_KEY = {"tmall": "outer_sku_id", "jd": "outerSkuId", "douyin": "code", "wxmini": "out_sku_id"}
_PRICE_KEY = {"tmall": "price", "jd": "jdPrice", "douyin": "goods_price", "wxmini": "sale_price"}


def test_skus_come_from_the_catalog_and_gifts_only_as_free_lines(run: list[SimEvent]) -> None:
    gift_lines = 0
    for e in run:
        doc = orjson.loads(e.payload)
        for line in _lines_of(e.channel, doc):
            item = CATALOG.get(line[_SKU_KEY[e.channel]])
            assert item is not None
            if item.gift:
                gift_lines += 1
                assert line[_PRICE_KEY[e.channel]] in (0, "0.00")
                if e.channel == "douyin":
                    assert line["given_product_type"] == "FREE" and line["pay_amount"] == 0
            elif e.channel == "douyin":
                assert line["given_product_type"] == ""
    assert gift_lines > 0
    douyin = [e.order for e in run if e.kind == "new" and e.channel == "douyin"]
    tmall = [e.order for e in run if e.kind == "new" and e.channel == "tmall"]

    def gift_rate(orders: list[SimOrder | None]) -> float:
        return sum(any(line.gift for line in o.lines) for o in orders if o) / len(orders)

    assert gift_rate(douyin) > 1.5 * gift_rate(tmall), "gifts come mostly with Douyin orders"


def _shape(value: Any) -> Any:
    """The structure of a JSON document: keys, nesting and scalar types (not values)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def test_payloads_have_the_shape_of_the_channel_samples(run: list[SimEvent]) -> None:
    if not SAMPLES.is_dir():
        pytest.skip("shared channel samples not available")
    for channel in CHANNELS:
        sample = json.loads((SAMPLES / f"{channel}.json").read_text(encoding="utf-8"))
        event = next(e for e in run if e.channel == channel and e.kind == "new" and e.status == "paid"
                     and e.order is not None and not e.order.merchant_note)
        assert _shape(orjson.loads(event.payload)) == _shape(sample), channel


def test_money_and_time_units_per_channel(run: list[SimEvent]) -> None:
    for e in run[:3000]:
        o = e.order
        assert o is not None
        doc = orjson.loads(e.payload)
        assert o.payment_fen == sum(line.paid_fen for line in o.lines) + o.freight_fen
        assert 0 <= o.discount_fen < o.goods_fen or o.goods_fen == 0
        if e.channel == "tmall":
            trade = doc["trade_fullinfo_get_response"]["trade"]
            assert trade["payment"] == yuan(o.payment_fen) and trade["created"] == beijing_time(o.created)
            assert ("pay_time" in trade) == (o.paid is not None)
        elif e.channel == "jd":
            assert doc["orderPayment"] == yuan(o.payment_fen)
            assert all(isinstance(i["itemTotal"], str) for i in doc["itemInfoList"])
            assert (doc["paymentConfirmTime"] == "0001-01-01 00:00:00") == (o.paid is None)
            consignee = doc["consigneeInfo"]
            assert consignee["province"] == o.province.short  # JD spells provinces without suffix
            if o.province.code in ("11", "12", "31", "50"):  # municipalities: levels shift up one
                assert (consignee["city"], consignee["county"]) == (o.district, o.address.street)
            else:
                assert (consignee["city"], consignee["county"]) == (o.city, o.district)
        elif e.channel == "douyin":
            d = doc["data"]["shop_order_detail"]
            assert d["pay_amount"] == o.payment_fen and d["create_time"] == o.created
            assert d["pay_time"] == (o.paid or 0) and d["order_expire_time"] == o.expire_s
            assert {line["reduce_stock_type"] for line in d["sku_order_list"]} <= {1, 2}
        else:
            info = doc["order"]["order_detail"]
            assert info["price_info"]["order_price"] == o.payment_fen
            assert info["pay_info"]["pay_time"] == (o.paid or 0)
    assert beijing_time(DOUBLE11_EPOCH) == "2026-11-11 00:00:00"
    assert yuan(29950) == "299.50" and yuan(5) == "0.05"


def test_channel_order_id_formats_and_uniqueness(run: list[SimEvent]) -> None:
    ids: dict[str, set[str]] = defaultdict(set)
    for e in run:
        if e.kind == "new":
            assert e.key not in ids[e.channel]
            ids[e.channel].add(e.key)
    lengths = {"tmall": 19, "jd": 12, "douyin": 19, "wxmini": 19}
    for channel, keys in ids.items():
        assert all(k.isdigit() and len(k) == lengths[channel] for k in keys), channel
    assert all(int(k) > 2 ** 53 for k in ids["tmall"])
    tmall = next(e for e in run if e.channel == "tmall")
    trade = orjson.loads(tmall.payload)["trade_fullinfo_get_response"]["trade"]
    assert trade["tid"] == int(trade["tid_str"]) == int(tmall.key)
    # Ids stay unique far beyond one run's volume.
    alloc = OrderIdAllocator(9)
    assert len({alloc.next("jd") for _ in range(200_000)}) == 200_000


# ---------------------------------------------------------------------------------------------
# Agreement with the normalizer
# ---------------------------------------------------------------------------------------------


def test_every_payload_normalizes_to_the_expected_status(run: list[SimEvent]) -> None:
    channels = pytest.importorskip("peakroute.domain.channels")
    from peakroute.domain.canonical import Rejection

    expected_by_kind = {"paid": "paid", "expired": "cancelled", "cancelled": "cancelled",
                        "address_change": "paid"}
    for e in run:
        try:
            order = channels.normalize(e.channel, e.payload, CATALOG)
        except Rejection as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"{e.kind} {e.channel} payload rejected: {exc}\n{e.payload.decode()}")
        assert channels.channel_order_id(e.channel, e.payload) == e.key
        sim = e.order
        assert sim is not None
        assert order.status == e.status == expected_by_kind.get(e.kind, sim.status)
        if e.kind == "new":
            assert order.status in ("pending_payment", "paid")
        assert order.channel_order_id == e.key and order.order_id == f"{e.channel}:{e.key}"
        assert (order.paid_at is None) == (sim.paid is None)
        assert order.payment_fen == sim.payment_fen and order.freight_fen == sim.freight_fen
        assert [(line.sku, line.qty, line.unit_price_fen, line.gift) for line in order.lines] == \
            [(line.sku, line.qty, line.unit_price_fen, line.gift) for line in sim.lines]
        assert sum(line.paid_fen for line in order.lines) == sim.payment_fen - sim.freight_fen
        if e.channel != "jd":  # JD sends no per-line paid amounts; the normalizer spreads them
            assert [line.paid_fen for line in order.lines] == [line.paid_fen for line in sim.lines]
        assert order.ship_to.province_code == sim.province.code
        assert order.ship_to.province == sim.province.name
        assert order.urgent == any("加急" in n for n in (sim.buyer_note, sim.merchant_note))
        assert (order.notes.buyer, order.notes.merchant) == (sim.buyer_note, sim.merchant_note)
        if e.channel == "douyin":
            assert order.reserve_on == ("order" if sim.reduce_stock_type == 1 else "payment")
            assert (order.expires_at is None) == (order.status != "pending_payment")


def test_payload_is_a_pure_function_of_the_order_state(run: list[SimEvent]) -> None:
    """A re-send carries the state it re-sends, so rebuilding any event's payload is exact."""
    for e in run[:500]:
        assert e.order is not None
        assert build_payload(e.order) == e.payload


# ---------------------------------------------------------------------------------------------
# The runner (fake producer: no Kafka in unit tests)
# ---------------------------------------------------------------------------------------------


class FakeProducer:
    """Records produce calls; delivers on poll/flush; can refuse (queue full) and fail deliveries."""

    def __init__(self, *, full_every: int = 0, fail_every: int = 0) -> None:
        self.messages: list[tuple[str, bytes, str]] = []
        self._waiting: list[tuple[Any, int]] = []
        self.full_every = full_every
        self.fail_every = fail_every
        self.calls = 0
        self.flushed = False

    def produce(self, topic: str, value: bytes | None = None, key: str | bytes | None = None,
                on_delivery: Any = None) -> None:
        self.calls += 1
        if self.full_every and self.calls % self.full_every == 0:
            raise BufferError("Local: Queue full")
        self.messages.append((topic, value or b"", key if isinstance(key, str) else ""))
        self._waiting.append((on_delivery, len(self.messages)))

    def poll(self, timeout: float = 0) -> int:
        served = len(self._waiting)
        for callback, n in self._waiting:
            callback("delivery failed" if self.fail_every and n % self.fail_every == 0 else None, None)
        self._waiting.clear()
        return served

    def flush(self, timeout: float = -1) -> int:
        self.poll()
        self.flushed = True
        return 0


def test_runner_produces_every_event_to_its_raw_topic() -> None:
    sim = PeakSaleSimulator(50, 10, 2, CATALOG)
    events = list(sim.events())
    producer = FakeProducer(full_every=97, fail_every=50)
    reports: list[SimStats] = []
    stats = run_simulation(sim, producer, realtime=False, progress=reports.append)
    assert producer.flushed
    assert producer.messages == [(raw_topic(e.channel), e.payload, e.key) for e in events]
    assert stats.events == len(events)
    assert stats.by_kind == {k: sum(e.kind == k for e in events) for k in EVENT_KINDS}
    assert stats.by_channel == {ch: sum(e.channel == ch for e in events) for ch in CHANNELS}
    assert stats.payload_bytes == sum(len(e.payload) for e in events)
    assert stats.queue_full_retries > 0
    assert stats.failed == len(events) // 50 and stats.delivered == len(events) - stats.failed
    assert reports and reports[-1].events == stats.events


def test_runner_is_open_loop_on_the_schedule() -> None:
    sim = PeakSaleSimulator(20, 5, 3, CATALOG)
    events = list(sim.events())
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    reports: list[SimStats] = []
    stats = run_simulation(sim, FakeProducer(), realtime=True, progress=reports.append,
                           clock=lambda: now[0], sleep=sleep)
    assert stats.events == len(events)
    assert now[0] == pytest.approx(events[-1].at)  # slept exactly up to the last event's time
    assert stats.max_lag_s == 0.0
    assert 3 <= len(reports) <= 7  # about once a second, plus the final report


def test_runner_keeps_reporting_while_waiting_for_sparse_events() -> None:
    sim = PeakSaleSimulator(0.3, 20, 4, CATALOG)
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    reports: list[SimStats] = []
    producer = FakeProducer()
    stats = run_simulation(sim, producer, realtime=True, progress=reports.append,
                           clock=lambda: now[0], sleep=sleep)
    assert stats.events == len(list(sim.events())) > 0
    assert len(reports) >= int(now[0]) - 1  # about once a second even between events


def test_runner_stops_cleanly_on_ctrl_c() -> None:
    class Interrupting(FakeProducer):
        def produce(self, *args: Any, **kwargs: Any) -> None:
            if len(self.messages) == 5:
                raise KeyboardInterrupt
            super().produce(*args, **kwargs)

    producer = Interrupting()
    stats = run_simulation(PeakSaleSimulator(50, 10, 2, CATALOG), producer, realtime=False)
    assert stats.interrupted and stats.events == 5 and stats.delivered == 5
    assert producer.flushed


def test_a_zero_factor_surge_silences_its_channel() -> None:
    sim = PeakSaleSimulator(20, 20, 1, CATALOG, surge=parse_surge("channel=jd,factor=0,start=5,duration=10"),
                            channel_mix={"jd": 1.0})
    new = [e for e in sim.events() if e.kind == "new"]
    assert new and not any(5.0 <= e.at < 15.0 for e in new)
    assert sim.expected_new_orders() == pytest.approx(20 * 10)


def test_bad_simulator_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        PeakSaleSimulator(0, 10, 1, CATALOG)
    with pytest.raises(ValueError, match="duration"):
        PeakSaleSimulator(10, -1, 1, CATALOG)
    with pytest.raises(ValueError, match="unpaid_ratio"):
        PeakSaleSimulator(10, 10, 1, CATALOG, unpaid_ratio=1.5)
    with pytest.raises(ValueError, match="channel_mix"):
        PeakSaleSimulator(10, 10, 1, CATALOG, channel_mix={"taobao": 1.0})
