"""A replaced owner's late changelog writes are told apart from the partition's own history
(peakroute/tables/stale.py)."""

from __future__ import annotations

import random

from peakroute.tables.stale import GENERATION_HEADER, LateRecords, generation_of

TP = ("stock-holds-changelog", 3)


def test_owners_following_each_other_keep_every_record() -> None:
    late = LateRecords()
    records = [(5, 100.0), (5, 100.5), (6, 130.0), (6, 131.0), (9, 200.0), (9, 199.0)]  # a clock step back: same owner
    assert all(late.keep(TP, ts, gen) for gen, ts in records)
    assert late.dropped == 0


def test_a_frozen_owners_write_sent_after_the_next_owner_wrote_is_left_out() -> None:
    late = LateRecords()
    assert late.keep(TP, 100.0, 5)
    assert late.keep(TP, 130.0, 6)          # the next owner
    assert not late.keep(TP, 101.0, 5)       # queued before the freeze, sent on waking
    assert not late.keep(TP, 129.9, 5)       # produced just before the newest record: still late
    assert late.keep(TP, 131.0, 6)
    assert late.dropped == 2


def test_a_late_write_before_the_next_owner_wrote_anything_is_not_recognised() -> None:
    late = LateRecords()
    assert late.keep(TP, 100.0, 5)
    assert late.keep(TP, 101.0, 5)           # the documented blind spot: nothing newer to judge by
    assert late.keep(TP, 130.0, 6)


def test_a_generation_counter_that_started_again_is_a_new_history_not_a_late_write() -> None:
    """The group deleted and re-created while no worker ran: generations start again at 1, but
    every record of the new history was produced after everything on the partition."""
    late = LateRecords()
    assert late.keep(TP, 1000.0, 412)
    assert late.keep(TP, 5000.0, 1)
    assert late.keep(TP, 5001.0, 2)
    assert not late.keep(TP, 4999.0, 1), "a late write of the new history is recognised again"


def test_records_without_a_generation_or_time_are_kept_and_judge_nothing() -> None:
    late = LateRecords()
    assert late.keep(TP, 100.0, 5)
    assert late.keep(TP, 100.0, None)
    assert late.keep(TP, None, 1)
    assert late.keep(TP, 0.0, 1)
    assert late.keep(TP, 130.0, 6)
    assert late.seen[TP] == (6, 130.0)


def test_partitions_are_judged_apart() -> None:
    late = LateRecords()
    assert late.keep(("t", 0), 100.0, 9)
    assert late.keep(("t", 1), 50.0, 2)


def test_generation_header_parsing() -> None:
    assert generation_of([(GENERATION_HEADER, b"17")]) == 17
    assert generation_of([("other", b"x"), (GENERATION_HEADER, b"3")]) == 3
    assert generation_of({GENERATION_HEADER: b"4"}) == 4
    assert generation_of(None) is None and generation_of([]) is None
    assert generation_of([(GENERATION_HEADER, b"x")]) is None


def test_random_histories_drop_exactly_the_late_writes() -> None:
    """Owners follow each other with rising generations; a replaced owner's queued writes land
    after the next owner's first write.  The filter drops those and nothing else."""
    rng = random.Random(7)
    for _ in range(300):
        late = LateRecords()
        t, gen, log, zombie = 0.0, rng.randint(1, 50), [], []
        for _owner in range(rng.randint(1, 6)):
            first = len(log)
            for _ in range(rng.randint(1, 8)):
                t += rng.uniform(0.001, 1.0)
                log.append((gen, t, False))
            if zombie:  # the previous owner's late writes land among this owner's, after its first
                at = rng.randint(first + 1, len(log))
                log[at:at] = [(g, ts, True) for g, ts in zombie]
                zombie = []
            if rng.random() < 0.5:  # this owner froze with writes queued
                zombie = [(gen, t + rng.uniform(0, 0.004)) for _ in range(rng.randint(1, 3))]
            t += rng.uniform(6.0, 30.0)  # the session timeout passes before the next owner writes
            gen += rng.randint(1, 3)
        for g, ts, is_late in log:
            kept = late.keep(TP, ts, g)
            assert kept != is_late, (g, ts, is_late, log)


def test_a_replaced_order_owners_late_requests_are_left_out_per_stock_ops_partition() -> None:
    from peakroute.tables.stale import fresh_ops

    senders = LateRecords()
    a_reserve = {"op": "reserve", "order_id": "o1", "line_id": "1", "reply_to": 2, "plan": "aaaa"}
    b_reserve = {"op": "reserve", "order_id": "o1", "line_id": "1", "reply_to": 2, "plan": "bbbb"}
    inventory = {"op": "adjust", "sku": "S", "delta": 5}  # no reply_to: never judged
    other = {"op": "reserve", "order_id": "o9", "line_id": "1", "reply_to": 4, "plan": "cccc"}
    assert fresh_ops(senders, 0, [a_reserve], 5, 100.0) == ([a_reserve], [])   # A owns order partition 2
    assert fresh_ops(senders, 0, [b_reserve], 6, 130.0) == ([b_reserve], [])   # B took it over
    # A's request queued before its freeze, delivered on waking: left out; others in the message kept
    assert fresh_ops(senders, 0, [a_reserve, inventory, other], 5, 101.0) == ([inventory, other], [a_reserve])
    # another stock-ops partition has no order with partition 0's messages: judged on its own
    assert fresh_ops(senders, 1, [a_reserve], 5, 101.0) == ([a_reserve], [])
    # messages of older builds carry no generation
    assert fresh_ops(senders, 0, [a_reserve], None, 101.0) == ([a_reserve], [])
