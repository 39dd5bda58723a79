"""Which changelog records the owner of a partition writes again (peakroute/tables/repair.py): an
older writer generation than its own, arriving after its recovery.  The real follower, store and
Kafka: tests/integration/test_recovery_late_records.py."""

from __future__ import annotations

from typing import Any

from peakroute.tables.repair import ChangelogFollower, late_keys

from .test_table_restore import EOF_CODE, TOPIC, Err, Msg, record


def test_only_writes_of_an_older_generation_are_repaired() -> None:
    messages = [
        record(0, 10, "mine", "1", gen=7),          # this worker's own write
        record(0, 11, "zombie", "9", gen=6),        # a replaced owner's, sent late
        record(1, 3, "older-build", "2"),           # no generation header: never judged
        record(1, 4, "newer", "3", gen=8),          # a newer owner's: this worker is the stale one
        record(2, 0, "gen-zero", "4", gen=0),       # the first generation is still older
        Msg(2, 1, err=Err(EOF_CODE)),               # an end-of-partition event
    ]
    assert late_keys(messages, 7) == [(TOPIC, 0, b"zombie"), (TOPIC, 2, b"gen-zero")]


def test_nothing_is_late_for_the_first_generation() -> None:
    assert late_keys([record(0, 0, "k", "v", gen=0)], 0) == []


class FakeConsumer:
    def __init__(self, batches: list[list[Any]]) -> None:
        self.batches = batches
        self.assigned: list[Any] = []

    def assign(self, tps: list[Any]) -> None:
        self.assigned = [(tp.topic, tp.partition, tp.offset) for tp in tps]

    def consume(self, num: int, timeout: float) -> list[Any]:
        return self.batches.pop(0)[:num] if self.batches else []

    def close(self) -> None:
        pass


def test_the_follower_reads_from_where_recovery_ended_and_never_waits() -> None:
    consumer = FakeConsumer([[record(0, 5, "a", "1", gen=3)], [record(1, 2, "b", "2", gen=3)]])
    follower = ChangelogFollower("unused:9092", consumer_factory=lambda conf: consumer)
    assert follower.poll() == []  # not following anything yet
    follower.follow({(TOPIC, 1): 2, (TOPIC, 0): 5}, generation=4)
    assert consumer.assigned == [(TOPIC, 0, 5), (TOPIC, 1, 2)]
    assert follower.generation == 4
    assert [m.key() for m in follower.poll()] == [b"a", b"b"]
    assert follower.poll() == []
