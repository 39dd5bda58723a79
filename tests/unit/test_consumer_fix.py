"""The consumer offset fix (streams/consumer_fix.py): a jump in an input partition's offsets
rewinds instead of being committed past; the commit never passes an un-acked head."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st
from intervaltree import IntervalTree

from peakroute.streams.consumer_fix import (
    DELIVER,
    DUPLICATE,
    FAUST_VERSION,
    HOLE,
    MAX_REWINDS,
    REWIND,
    SKIP,
    OffsetTracker,
    ReadOffsets,
    _new_offset,
    installed_faust_version,
)

TP = ("peakroute.orders", 3)


def test_contiguous_offsets_are_delivered() -> None:
    t = OffsetTracker()
    t.reset(TP, 10)
    assert [t.decide(TP, o, 1)[0] for o in (10, 11, 12)] == [DELIVER] * 3
    assert t.expected[TP] == 13


def test_unknown_position_accepts_the_first_record() -> None:
    t = OffsetTracker()
    assert t.decide(TP, 57, 1) == (DELIVER, None)
    assert t.decide(TP, 58, 1) == (DELIVER, None)


def test_a_jump_rewinds_and_the_rest_of_that_fetch_is_skipped() -> None:
    t = OffsetTracker()
    t.reset(TP, 10)
    assert t.decide(TP, 10, 1) == (DELIVER, None)
    assert t.decide(TP, 25, 1) == (REWIND, 11)  # 11..24 were skipped by the consumer
    assert t.decide(TP, 26, 1) == (SKIP, None)  # fetched before the rewind
    # The next fetch starts where the rewind pointed.
    assert [t.decide(TP, o, 2)[0] for o in range(11, 27)] == [DELIVER] * 16
    assert t.rewinding == {}


def test_offsets_below_the_next_one_are_duplicates() -> None:
    t = OffsetTracker()
    t.reset(TP, 10)
    t.decide(TP, 10, 1)
    t.decide(TP, 11, 1)
    assert t.decide(TP, 10, 2) == (DUPLICATE, None)
    assert t.decide(TP, 12, 2) == (DELIVER, None)


def test_a_hole_that_survives_the_rewinds_is_accepted() -> None:
    t = OffsetTracker()
    t.reset(TP, 10)
    verdicts = [t.decide(TP, 40, b) for b in range(1, MAX_REWINDS + 2)]
    assert verdicts[:MAX_REWINDS] == [(REWIND, 10)] * MAX_REWINDS
    assert verdicts[-1] == (HOLE, 10)
    assert t.decide(TP, 41, 9) == (DELIVER, None)


def test_a_seek_resets_the_position_and_any_rewind() -> None:
    t = OffsetTracker()
    t.reset(TP, 10)
    assert t.decide(TP, 30, 1)[0] == REWIND
    t.reset(TP, 30)  # a rebalance sought to the committed offset 30
    assert t.decide(TP, 30, 2) == (DELIVER, None)
    t.reset(TP, None)  # revoked: anything goes until the next seek
    assert t.decide(TP, 5, 3) == (DELIVER, None)


def test_a_fetch_position_past_the_delivered_records_rewinds_to_the_first_undelivered() -> None:
    """The last records of a partition fetched and dropped: no later record reveals the jump."""
    t = OffsetTracker()
    t.reset(TP, 10)
    for o in (10, 11):
        t.decide(TP, o, 1)
    assert t.overrun(TP, 12) is None  # everything handed out was delivered
    assert t.overrun(TP, 16) == 12  # 12..15 were handed out and never reached the loop
    assert t.overrun(TP, None) is None  # position unknown (mid-rebalance)
    assert t.overrun(("peakroute.orders", 4), 99) is None  # nothing known about that partition


def test_records_dropped_before_the_first_delivery_after_a_seek_are_noticed() -> None:
    """A fresh worker sought to the committed offset 40; the one record left (40) was handed out
    and dropped, and nothing follows it: only the pending seek knows where delivery should start."""
    from typing import NamedTuple

    from peakroute.streams.consumer_fix import overruns

    class Tp(NamedTuple):
        topic: str
        partition: int

    raw, changelog, revoked = Tp("peakroute.raw.wxmini", 3), Tp("app-order-state-changelog", 3), Tp("peakroute.orders", 1)
    t = OffsetTracker()
    resets = {raw: 40, changelog: 7, revoked: None}
    positions = {raw: 41, changelog: 99, revoked: 5}
    assert overruns(t, resets, frozenset({"peakroute.raw.wxmini", "peakroute.orders"}), positions.get) == [(raw, 40)]
    assert resets == {changelog: 7, revoked: None}  # the seek was taken over; the rest is left alone
    assert t.expected[raw] == 40


def test_a_record_whose_delivery_was_cut_short_is_expected_again() -> None:
    t = OffsetTracker()
    t.reset(TP, 10)
    t.decide(TP, 10, 1)
    t.decide(TP, 11, 1)
    t.undelivered(TP, 11)  # the flow stopped while 11 waited for the stream
    assert t.expected[TP] == 11
    assert t.overrun(TP, 12) == 11
    assert t.decide(TP, 11, 2) == (DELIVER, None)


@given(st.integers(1, 40), st.lists(st.tuples(st.integers(1, 8), st.integers(0, 8)), min_size=1, max_size=60))
def test_records_dropped_between_fetch_and_delivery_are_all_delivered_in_the_end(
        total: int, fetches: list[tuple[int, int]]) -> None:
    """Model of faust's getmany: each fetch hands out up to ``size`` records from the position and
    moves the position past all of them, but delivers only the first ``kept`` (the partition left
    the active set mid-fetch).  Between fetches the overrun check runs.  Whatever the drops, once
    the drops stop every record 0..total-1 is delivered exactly once, in order."""
    t = OffsetTracker()
    t.reset(TP, 0)
    delivered: list[int] = []
    position = 0
    batches = [*fetches, *[(8, 8)] * (total + 2)]  # then the drops stop
    for batch, (size, kept) in enumerate(batches, start=1):
        target = t.overrun(TP, position)
        if target is not None:
            position = target  # the rewind (a seek)
        handed = list(range(position, min(position + size, total)))
        position += len(handed)
        for offset in handed[:kept]:
            verdict, target = t.decide(TP, offset, batch)
            if verdict == DELIVER:
                delivered.append(offset)
            elif verdict == REWIND:
                position = target
                break
            assert verdict != HOLE
    assert delivered == list(range(total))


@given(st.lists(st.tuples(st.integers(0, 60), st.booleans()), max_size=80))
def test_every_offset_is_delivered_in_order_whatever_the_fetches(fetches: list[tuple[int, bool]]) -> None:
    """Model: a consumer whose fetches sometimes start at a wrong (later) position; after a
    rewind the next fetch starts at the rewind target.  Delivered offsets are always 0, 1, 2, …"""
    t = OffsetTracker()
    t.reset(TP, 0)
    delivered: list[int] = []
    position = 0
    for batch, (jump, buggy) in enumerate(fetches, start=1):
        start = position + jump if buggy else position
        for offset in range(start, start + 5):
            verdict, target = t.decide(TP, offset, batch)
            if verdict == DELIVER:
                delivered.append(offset)
                position = offset + 1
            elif verdict == REWIND:
                position = target
                break
            assert verdict != HOLE or jump > 0
    holes_accepted = len(delivered) != len(set(delivered)) or delivered != sorted(delivered)
    assert not holes_accepted
    gaps = [b - a for a, b in zip(delivered, delivered[1:], strict=False) if b - a != 1]
    # A jump is only ever accepted after MAX_REWINDS fetches that all started past the target.
    assert len(gaps) <= len(fetches) // (MAX_REWINDS + 1)


def test_read_offsets_notes_writes_from_outside_the_loop() -> None:
    r = ReadOffsets({TP: 7})
    assert r.resets == {TP: 7}  # positions set before the loop started count as seeks
    r.resets.clear()
    r.set_read(TP, 8)
    assert r[TP] == 8 and r.resets == {}
    r.update({TP: 5})  # perform_seek
    assert r.resets == {TP: 5}
    r.pop(TP, None)  # revocation
    assert r.resets[TP] is None and r.get(TP) is None
    r[TP] = 12  # seek
    del r[TP]  # _seek_wait to offset 0
    assert r.resets[TP] is None
    assert r[("other", 0)] is None  # still a defaultdict for faust's own reads


def _consumer(acked: list[int], committed: int | None, gaps: list[tuple[int, int]] = ()) -> SimpleNamespace:
    gap = IntervalTree()
    for a, b in gaps:
        gap.addi(a, b)
    return SimpleNamespace(_acked={TP: list(acked)}, _gap={TP: gap}, _committed_offset=defaultdict(lambda: None,
                           {TP: committed}), _acked_index=defaultdict(set, {TP: set(acked)}))


def test_commit_waits_for_the_record_at_the_committed_offset() -> None:
    # faust-streaming 0.15.3 returned 14 here: record 10 (the next to read) lost on a crash.
    assert _new_offset(_consumer([11, 12, 13], committed=10), TP) is None
    assert _new_offset(_consumer([10, 11, 12, 13], committed=10), TP) == 14
    assert _new_offset(_consumer([1, 2], committed=0), TP) is None  # 0 is an offset too
    assert _new_offset(_consumer([5, 6], committed=None), TP) == 7  # nothing committed yet


def test_commit_stops_at_the_first_gap_and_covers_accepted_holes() -> None:
    assert _new_offset(_consumer([10, 11, 14, 15], committed=10), TP) == 12
    # An accepted hole (14..19 missing from the topic) counts as done.
    assert _new_offset(_consumer([10, 11, 12, 13, 20], committed=10, gaps=[(14, 20)]), TP) == 21


def test_the_fix_is_for_the_locked_faust_version() -> None:
    assert installed_faust_version() == FAUST_VERSION


def test_an_input_partition_never_committed_is_anchored_at_its_first_offset() -> None:
    """tests/evidence/2026-12-04-kill9-lost: with no committed offset every guard took whatever
    came first.  At every seek, each such input partition is sought to its first offset and the
    committed and read offsets say so (a read offset set from outside is a reset: the drain loop's
    tracker starts there); partitions with a commit, and changelogs, are left to faust."""
    import asyncio

    from faust.types import TP as FaustTP

    from peakroute.streams.consumer_fix import _perform_seek_factory, unanchored

    raw0, raw1, ops2 = FaustTP("peakroute.raw.jd", 0), FaustTP("peakroute.raw.jd", 1), FaustTP("stock-ops", 2)
    raw2, changelog = FaustTP("peakroute.raw.jd", 2), FaustTP("order-routing-changelog", 0)
    inputs = frozenset({"peakroute.raw.jd", "stock-ops"})

    class FakeConsumer:
        def __init__(self) -> None:
            self._committed_offset: dict = defaultdict(lambda: None)
            self._read_offset = ReadOffsets()
            self.sought: list = []
            self.asked: list = []

        def assignment(self) -> set:
            return {raw0, raw1, raw2, ops2, changelog}

        async def earliest_offsets(self, *tps):  # noqa: ANN002, ANN202
            self.asked.append(tps)
            return {tp: 7 if tp == ops2 else 0 for tp in tps}

        async def _seek(self, tp, offset):  # noqa: ANN001, ANN202
            self.sought.append((tp, offset))

    async def faust_seek(self) -> None:  # noqa: ANN001
        # What faust's own perform_seek leaves: raw1 committed at 12, raw2 at 0 (kept as None),
        # raw0 and ops2 never committed; read offsets set for every partition.
        self._committed_offset.update({raw1: 12})
        self._read_offset.update({raw0: None, raw1: 12, raw2: 0, ops2: None, changelog: None})

    consumer = FakeConsumer()
    assert unanchored(consumer.assignment(), {raw0: None, raw1: 12, raw2: 0, changelog: None}, inputs) == \
        [raw0, raw2, ops2]
    seek = _perform_seek_factory(faust_seek, inputs)
    for _ in range(2):  # faust seeks again at every rebalance and while the flow is stopped
        consumer.sought.clear()
        asyncio.run(seek(consumer))
        assert consumer.sought == [(raw0, 0), (raw2, 0), (ops2, 7)]
        assert [consumer._committed_offset[tp] for tp in (raw0, raw1, raw2, ops2)] == [0, 12, 0, 7]
        assert consumer._committed_offset[changelog] is None
        assert [consumer._read_offset.resets[tp] for tp in (raw0, raw1, raw2, ops2)] == [0, 12, 0, 7]
    assert len(consumer.asked) == 1, "first offsets asked once per partition"
