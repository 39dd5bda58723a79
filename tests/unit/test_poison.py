"""Poison pills and zombies (pure parts of agents/common.py): big payloads are cut so their dead
letter fits in Kafka, a message failing with plumbing errors is retried a bounded number of times
(counted across restarts) and then dead-lettered, and a worker frozen past its limit exits."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from peakroute.agents import common
from peakroute.agents.common import (
    MAX_DLQ_PAYLOAD,
    MAX_PLUMBING_RETRIES,
    FreezeWatch,
    RetryCounter,
    dead_letter_record,
    exhausted,
    freeze_limit,
)


@dataclass
class Msg:
    value: bytes | None
    key: bytes | None = b"k"
    topic: str = "peakroute.orders"
    partition: int = 2
    offset: int = 41
    timestamp: float | None = 1_794_326_400.5


@dataclass
class Event:
    message: Msg


class Died(Exception):
    pass


class FakeDlq:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def send(self, key: bytes | None, value: bytes) -> None:
        assert len(value) < 1_000_000, "a dead letter must fit in one Kafka message"
        self.sent.append(orjson.loads(value))


@given(st.binary(max_size=2048) | st.none())
def test_small_payloads_are_kept_whole(payload: bytes | None) -> None:
    rec = dead_letter_record(Msg(payload), channel=None, stage="t", reason="malformed_json", field="$", detail="d")
    assert rec["payload_bytes"] == (len(payload) if payload is not None else 0)
    assert (base64.b64decode(rec["payload_b64"]) if payload is not None else None) == payload
    assert "payload_truncated" not in rec
    assert rec["source"] == {"topic": "peakroute.orders", "partition": 2, "offset": 41, "timestamp_ms": 1_794_326_400_500}


def test_oversized_payload_is_cut_with_length_and_hash_and_fits_in_kafka() -> None:
    payload = b"\xff" + b"x" * (900 * 1024)
    rec = dead_letter_record(Msg(payload), channel="jd", stage="normalize", reason="malformed_json", field="$",
                             detail="d")
    assert rec["payload_truncated"] is True
    assert rec["payload_bytes"] == len(payload)
    assert rec["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert base64.b64decode(rec["payload_b64"]) == payload[:MAX_DLQ_PAYLOAD]
    assert rec["payload"] is None
    assert len(orjson.dumps(rec)) < 1_000_000


def test_retry_budget() -> None:
    assert not exhausted(1, 3) and not exhausted(3, 3) and exhausted(4, 3)


def test_failure_counts_survive_a_restart_in_the_state_dir(tmp_path: Path) -> None:
    path = tmp_path / "failures" / "app.json"
    assert RetryCounter("app", None, path).failed("t", 0, 5) == 1
    assert RetryCounter("app", None, path).failed("t", 0, 5) == 2  # a new process, same file
    assert RetryCounter("app", None, path).failed("t", 0, 6) == 1  # another message
    assert RetryCounter("other", None, path).failed("t", 0, 5) == 1  # another consumer group


def test_unreachable_redis_falls_back_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    counter = RetryCounter("app", "redis://127.0.0.1:1/0", path)
    assert counter.failed("t", 1, 1) == 1
    assert RetryCounter("app", None, path).failed("t", 1, 1) == 2


def test_a_message_failing_with_plumbing_errors_is_retried_then_dead_lettered(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def die(stage: str, exc: BaseException) -> None:
        raise Died(stage)

    monkeypatch.setattr(common, "die", die)
    monkeypatch.setattr(common.GUARDS, "retries", RetryCounter("app", None, tmp_path / "f.json"))
    event, dlq = Event(Msg(b'{"order_id": "x"}')), FakeDlq()
    for _ in range(MAX_PLUMBING_RETRIES):  # each attempt: the worker exits to re-read the message
        with pytest.raises(Died):
            asyncio.run(common.dead_letter_exception(dlq, event, OSError("disk on fire"), channel=None, stage="t"))
    assert dlq.sent == []
    asyncio.run(common.dead_letter_exception(dlq, event, OSError("disk on fire"), channel=None, stage="t"))
    [rec] = dlq.sent
    assert rec["reason"] == "internal_error"
    assert f"failed {MAX_PLUMBING_RETRIES + 1} times" in rec["detail"]
    assert rec["source"]["offset"] == 41


def test_a_message_failing_by_its_own_fault_is_dead_lettered_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "die", lambda stage, exc: (_ for _ in ()).throw(Died(stage)))
    dlq = FakeDlq()
    asyncio.run(common.dead_letter_exception(dlq, Event(Msg(b"[]")), KeyError("lines"), channel=None, stage="t"))
    assert dlq.sent[0]["reason"] == "internal_error" and "KeyError" in dlq.sent[0]["detail"]


def test_freeze_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    def die(stage: str, exc: BaseException) -> None:
        raise Died(str(exc))

    monkeypatch.setattr(common, "die", die)
    watch = FreezeWatch(limit_s=6.0)
    watch.check("before the first tick", now=1e9)  # not started: never fires
    watch.tick(now=100.0)
    watch.tick(now=101.0)
    watch.check("agent", now=106.9)
    with pytest.raises(Died, match="frozen for 8.0 s"):
        watch.check("agent", now=109.0)
    with pytest.raises(Died):
        watch.tick(now=120.0)  # the watch itself notices the gap


def test_freeze_watch_ticks_on_the_loop_from_its_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Started at the first assignment (before faust's first recovery, when faust timers do not
    run yet): a loop blocked longer than the limit is noticed by the watch's own next tick."""
    deaths: list[str] = []
    monkeypatch.setattr(common, "die", lambda stage, exc: deaths.append(f"{stage}: {exc}"))
    watch = FreezeWatch(limit_s=0.5)  # well above a busy test box's scheduling hiccups

    async def run() -> None:
        loop = asyncio.get_running_loop()
        watch.start(loop, interval_s=0.02)
        first = watch.last_tick
        watch.start(loop, interval_s=0.02)  # a second assignment: still one chain of ticks
        await asyncio.sleep(0.1)
        assert watch.last_tick is not None and first is not None and watch.last_tick > first
        assert not deaths
        time.sleep(0.8)  # the loop stands still (as under SIGSTOP)
        await asyncio.sleep(0.05)

    asyncio.run(run())
    assert len(deaths) == 1 and deaths[0].startswith("freeze-watch: event loop frozen")


def test_freeze_limit_stays_under_the_session_timeout() -> None:
    assert freeze_limit(30) == 24
    assert freeze_limit(12) == 6
    for s in (6, 10, 12, 30, 60, 300):
        assert 0 < freeze_limit(s) < s


def test_stock_view_repair_picks_the_levels_of_the_missing_partitions() -> None:
    from peakroute.agents.common import levels_of_partitions, sku_partition

    table = [("SKU-A|WH-EAST", [10, 2, 1]), ("SKU-A|WH-NORTH", [5, 0, 0]), ("SKU-B|WH-EAST", [7, 7, 0]),
             ("SKU-C|WH-SOUTH", None)]
    n = 6
    want = {sku_partition("SKU-A", n)}
    got = levels_of_partitions(table, want, n)
    assert sorted(got) == [("SKU-A", "WH-EAST", (10, 2, 1)), ("SKU-A", "WH-NORTH", (5, 0, 0))] or \
        sku_partition("SKU-B", n) in want
    everything = levels_of_partitions(table, set(range(n)), n)
    assert len(everything) == 3


def test_commit_stall_fires_only_when_the_commit_stays_put_while_messages_wait() -> None:
    from peakroute.agents.common import CommitStall

    stall = CommitStall(60)
    assert stall.observe({"a": (10, 5), "b": (None, None)}, now=0) == []
    assert stall.observe({"a": (20, 5)}, now=50) == []
    assert stall.observe({"a": (20, 5)}, now=61) == ["a"]
    assert stall.observe({"a": (30, 21)}, now=62) == []  # committed moved: a new clock
    assert stall.observe({"a": (30, 31)}, now=200) == []  # caught up: nothing waits
    assert stall.observe({"a": (40, 31)}, now=210) == []
    stall.reset()
    assert stall.observe({"a": (40, 31)}, now=400) == []
    # Idle partitions after a restart: read = the seek position, nothing committed by this process.
    idle = CommitStall(60)
    assert idle.observe({"inv": (41, None), "raw": (7, 7)}, now=0) == []
    assert idle.observe({"inv": (41, None), "raw": (7, 7)}, now=500) == []
    # ... but reading on without ever committing is a stall.
    assert idle.observe({"inv": (45, None)}, now=501) == []
    assert idle.observe({"inv": (45, None)}, now=600) == ["inv"]


def test_commit_stall_reports_each_slow_partition_once_before_it_fires() -> None:
    """The warning with the consumer's offset bookkeeping comes once per stall, well before the exit."""
    from peakroute.agents.common import CommitStall

    stall = CommitStall(60)
    stall.observe({"a": (20, 5), "b": (9, 9)}, now=0)
    assert stall.newly_slow(20) == []
    stall.observe({"a": (20, 5), "b": (9, 9)}, now=21)
    assert stall.newly_slow(20) == ["a"]
    stall.observe({"a": (25, 5)}, now=30)
    assert stall.newly_slow(20) == []  # said once
    stall.observe({"a": (25, 6)}, now=31)  # moved: a new stall may be reported again
    stall.observe({"a": (25, 6)}, now=52)
    assert stall.newly_slow(20) == ["a"]


def test_tables_settled_only_between_rebalances_with_the_actives_recovered() -> None:
    """The stock owner's reserved-vs-holds check (a whole-table read) waits for it:
    a batch taken before a rebalance can run while faust still recovers the new partitions."""
    from types import SimpleNamespace

    from peakroute.agents.common import tables_settled

    def app(rebalancing: bool, actives_ready: bool) -> SimpleNamespace:
        return SimpleNamespace(rebalancing=rebalancing, tables=SimpleNamespace(actives_ready=actives_ready))

    assert tables_settled(app(False, True))
    assert not tables_settled(app(True, True))  # a rebalance has started: the assignment is changing
    assert not tables_settled(app(False, False))  # recovery of the active partitions not finished
    assert not tables_settled(app(True, False))


def test_events_of_partitions_not_owned_or_during_a_rebalance_are_set_aside_uncounted() -> None:
    """A message fetched before a rebalance can reach an agent while the rebalance is under way
    (faust resumes the flow while it recovers tables): the agents must not act on it — its
    partition may be another worker's now, or its tables half recovered — and faust must not count
    its offset as processed (the rebalance's seek to the committed offsets reads it again)."""
    from types import SimpleNamespace

    from faust.types import TP

    from peakroute.agents.common import owned_events
    from peakroute.metrics import registry as m

    class Message:  # hashable by identity, as faust's messages are
        def __init__(self, topic: str, partition: int, offset: int = 10) -> None:
            self.topic, self.partition, self.offset, self.acked = topic, partition, offset, False

    def event(topic: str, partition: int) -> SimpleNamespace:
        message = Message(topic, partition)
        unacked.add(message)
        return SimpleNamespace(message=message)

    from peakroute.streams.consumer_fix import OffsetTracker

    tracker = OffsetTracker()
    tracker.expected[TP("ops", 1)] = 11  # offset 10 of ops[1] was delivered

    def app(actives: set, rebalancing: bool = False, actives_ready: bool = True) -> SimpleNamespace:
        return SimpleNamespace(assignor=SimpleNamespace(assigned_actives=lambda: actives),
                               rebalancing=rebalancing, tables=SimpleNamespace(actives_ready=actives_ready),
                               consumer=SimpleNamespace(_unacked_messages=unacked, _peakroute_offsets=tracker))

    unacked: set = set()  # faust's consumer waits for these at a revocation
    mine, theirs, other_topic = event("ops", 0), event("ops", 1), event("replies", 0)
    owner = app({TP("ops", 0), TP("replies", 0)})
    before = m.STALE_EVENTS.labels("stock")._value.get()
    assert owned_events(owner, [mine, theirs, other_topic], "stock") == [mine, other_topic]
    assert m.STALE_EVENTS.labels("stock")._value.get() - before == 1
    assert theirs.message.acked and not mine.message.acked  # take_events' ack of it records nothing
    assert theirs.message not in unacked and mine.message in unacked
    assert tracker.expected[TP("ops", 1)] == 10  # the consumer fix expects it again (fetched again)

    during = [event("ops", 0), event("replies", 0)]
    assert owned_events(app({TP("ops", 0)}, rebalancing=True), during, "stock") == []
    assert all(e.message.acked for e in during)
    recovering = [event("ops", 0)]
    assert owned_events(app({TP("ops", 0)}, actives_ready=False), recovering, "stock") == []

    def no_assignment() -> set:
        raise RuntimeError("not assigned yet")

    starting = SimpleNamespace(assignor=SimpleNamespace(assigned_actives=no_assignment), rebalancing=False,
                               tables=SimpleNamespace(actives_ready=True))
    fresh = [event("ops", 0), event("ops", 1)]
    assert owned_events(starting, fresh, "stock") == fresh  # nothing to judge by


def test_an_orders_raw_partition_is_the_one_kafkas_default_partitioner_picks_for_its_channel_order_id() -> None:
    """murmur2 as Kafka's Java client computes it (its own test vectors), masked and taken modulo:
    the partition a producer with Kafka's default partitioner writes a payload keyed by the channel
    order id to, which is where the order's routing state lives."""
    java = {"21": -973932308, "foobar": -790332482, "a-little-bit-long-string": -985981536,
            "a-little-bit-longer-string": -1486304829, "abc": 479470107,
            "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971}
    for key, h in java.items():
        for n in (1, 6, 12, 256):
            assert common.order_partition(key, n) == (h & 0x7FFFFFFF) % n


def test_recovery_stall_fires_only_after_the_limit_without_a_changelog_record() -> None:
    """The recovery watch (tests/evidence/2026-11-28-recovery-hang): quiet time counts from the
    recovery's start or its latest record, whichever is later; no recovery, no stall."""
    from peakroute.agents.common import RecoveryStall

    watch = RecoveryStall(60)
    assert watch.stalled_for(1000, None, None) is None  # not recovering
    assert watch.stalled_for(1000, 950, None) is None
    assert watch.stalled_for(1000, 930, None) == 70  # nothing since the start
    assert watch.stalled_for(1000, 900, 990) is None  # records are arriving
    assert watch.stalled_for(1000, 900, 935) == 65  # they stopped
    # A record from the previous recovery (faust clears them, but never trust it) does not count.
    assert watch.stalled_for(1000, 930, 800) == 70


def test_recovery_diagnosis_reads_what_faust_keeps_on_an_unstarted_app(tmp_path) -> None:
    """The diagnosis only reads faust's private bookkeeping; an upgrade that renames it must fail
    here, not in the one log line that explains a stall in production."""
    from dataclasses import replace

    from peakroute.agents.common import recovery_diagnosis
    from peakroute.config import Settings
    from peakroute.streams.app import build_app

    app = build_app(replace(Settings(), kafka_bootstrap="127.0.0.1:1", state_dir=str(tmp_path)))
    got = recovery_diagnosis(app)
    assert got["remaining"] == 0 and got["partitions"] == {} and got["buffers"] == {}
    assert set(got) == {"remaining", "flow_active", "flow_control_active", "fetcher", "buffers", "partitions"}


def test_input_order_admits_records_in_offset_order_from_the_committed_offset() -> None:
    """tests/evidence/2026-11-28-skipped-stock-op: a stock-ops record acted on before an earlier,
    uncommitted one oversold 2 units.  A record past a missing one must wait for it."""
    from peakroute.agents.common import InputOrder

    order = InputOrder()
    assert order.admit("p3", 54, committed=44) == 44  # 44..53 never reached the agent
    assert order.admit("p3", 54, committed=44) == 44  # still missing: nothing counted as acted on
    assert order.admit("p3", 44, committed=44) is None
    assert [order.admit("p3", o, committed=44) for o in range(45, 55)] == [None] * 10
    assert order.admit("p3", 56, committed=44) == 55  # one lost in the middle
    assert order.admit("p3", 50, committed=44) is None  # a re-read (rewind, re-sent batch): idempotent
    assert order.admit("p3", 52, committed=44) == 51  # ... and it continues from there
    # Nothing committed yet for the partition: its first record is taken as the start.
    assert order.admit("p4", 7, committed=None) is None
    assert order.admit("p4", 9, committed=None) == 8
    # A new assignment judges against the committed offset again.
    order.reset()
    assert order.admit("p3", 60, committed=60) is None
    assert order.admit("p4", 12, committed=10) == 10
    # Records fetched before the re-read took effect keep coming: all wait, however many.
    assert [order.admit("p4", o, committed=10) for o in range(13, 40)] == [10] * 27
    # Offsets gone from the topic (retention): after a few re-reads that never bring them, go on.
    for _ in range(InputOrder.MAX_MISSES - 1):
        assert order.admit("p4", 12, committed=10) == 10  # read again from 10: 12 comes first again
        assert order.admit("p4", 13, committed=10) == 10
    assert order.admit("p4", 12, committed=10) is None
    assert order.admit("p4", 13, committed=10) is None


def test_tracker_expect_makes_the_check_between_fetches_rewind_to_a_missing_offset() -> None:
    from peakroute.streams.consumer_fix import OffsetTracker

    tracker = OffsetTracker()
    tracker.expected["p"] = 71
    tracker.expect("p", 44)
    assert tracker.overrun("p", position=71) == 44
    tracker.expect("p", 50)  # never moves the expected offset forward
    assert tracker.expected["p"] == 44
    fresh = OffsetTracker()
    fresh.expect("q", 3)  # a partition the tracker had forgotten
    assert fresh.overrun("q", position=9) == 3


def test_recovery_watch_reads_changelogs_again_before_it_gives_up() -> None:
    """The looped run's diagnosis (tests/evidence/2026-11-28-recovery-hang): every recovering
    partition fetched to its end, nothing received.  Read again after repair_s, at most once per
    repair_s; exit after limit_s."""
    from peakroute.agents.common import RecoveryStall, changelog_rewinds

    watch = RecoveryStall(60, repair_s=15)
    assert not watch.repair_due(1010, started_at=1000, last_event_at=None)
    assert watch.repair_due(1016, started_at=1000, last_event_at=None)
    assert not watch.repair_due(1021, started_at=1000, last_event_at=None)  # just repaired
    assert watch.repair_due(1032, started_at=1000, last_event_at=None)
    assert not watch.repair_due(1050, started_at=1000, last_event_at=1040)  # records arrive again
    assert not watch.repair_due(2000, started_at=None, last_event_at=None)  # not recovering
    assert watch.stalled_for(1061, started_at=1000, last_event_at=None) == 61

    # tp -> last applied, last to reach, the client's next fetch
    offsets = {"routing[0]": -1, "holds[0]": 40, "levels[0]": 116, "levels[2]": None}
    highwaters = {"routing[0]": 230, "holds[0]": 113, "levels[0]": 117, "levels[2]": 71}
    positions = {"routing[0]": 231, "holds[0]": 41, "levels[0]": 118, "levels[2]": None}
    assert changelog_rewinds(offsets, highwaters, positions) == {"routing[0]": 0, "levels[0]": 117}
    # holds[0]: the client is where the recovery is (nothing dropped: waiting on the broker);
    # levels[2]: position unknown; a partition recovered to its highwater is never read again.
    assert changelog_rewinds({"t": 230}, {"t": 230}, {"t": 231}) == {}
