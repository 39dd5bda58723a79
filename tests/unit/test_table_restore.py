"""Bulk table restore (peakroute/tables/restore.py) against a stand-in changelog and database:
which records land, which are left out or left to faust, and that every database's persisted
offset names exactly what it holds — also when the restore is cut short.  The real consumer and
RocksDB: tests/integration/test_table_restore.py, and every worker start of the integration tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from peakroute.tables import restore
from peakroute.tables.stale import GENERATION_HEADER, LateRecords

EOF_CODE = -191  # librdkafka's _PARTITION_EOF
OFFSET_KEY = b"__faust\x00offset__"
TOPIC = "peakroute-stock-levels-changelog"


@dataclass
class Err:
    code_: int

    def code(self) -> int:
        return self.code_

    def __str__(self) -> str:
        return f"error {self.code_}"


@dataclass
class Msg:
    partition_: int
    offset_: int
    key_: bytes | None = None
    value_: bytes | None = None
    ts_ms: int = 1_000_000
    gen: int | None = None
    err: Err | None = None

    def error(self) -> Err | None:
        return self.err

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def key(self) -> bytes | None:
        return self.key_

    def value(self) -> bytes | None:
        return self.value_

    def timestamp(self) -> tuple[int, int]:
        return (1, self.ts_ms)

    def headers(self) -> list[tuple[str, bytes]] | None:
        return None if self.gen is None else [(GENERATION_HEADER, str(self.gen).encode())]


def record(partition: int, offset: int, key: str, value: str | None, gen: int | None = None, ts_ms: int = 0) -> Msg:
    return Msg(partition, offset, key.encode(), None if value is None else value.encode(),
               ts_ms=ts_ms or 1_000_000 + offset, gen=gen)


class Batch:
    def __init__(self) -> None:
        self.ops: list[tuple[str, bytes, bytes | None]] = []

    def put(self, key: bytes, value: bytes) -> None:
        self.ops.append(("put", key, value))

    def delete(self, key: bytes) -> None:
        self.ops.append(("delete", key, None))


@dataclass
class Db:
    data: dict[bytes, bytes] = field(default_factory=dict)
    writes: int = 0

    def write(self, batch: Batch) -> None:
        self.writes += 1
        for op, key, value in batch.ops:
            if op == "put":
                self.data[key] = value  # type: ignore[assignment]
            else:
                self.data.pop(key, None)

    def persisted(self) -> int | None:
        raw = self.data.get(OFFSET_KEY)
        return None if raw is None else int(raw)


class Changelog:
    """A stand-in consumer over per-partition record lists (offsets may have gaps: compaction)."""

    def __init__(self, logs: dict[int, list[Msg]], low: dict[int, int] | None = None, per_call: int = 3) -> None:
        self.logs, self.low, self.per_call = logs, low or {}, per_call
        self.positions: dict[int, int] = {}
        self.eof_sent: set[int] = set()
        self.closed = False
        self.config: dict[str, Any] = {}

    def __call__(self, config: dict[str, Any]) -> Changelog:
        self.config = config
        return self

    def high(self, partition: int) -> int:
        log = self.logs.get(partition, [])
        return log[-1].offset_ + 1 if log else self.low.get(partition, 0)

    def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
        return self.low.get(tp.partition, 0), self.high(tp.partition)

    def assign(self, tps: list[Any]) -> None:
        self.positions = {tp.partition: tp.offset for tp in tps}

    def consume(self, n: int, timeout: float) -> list[Msg]:
        out: list[Msg] = []
        for partition, pos in sorted(self.positions.items()):
            pending = [m for m in self.logs.get(partition, []) if m.offset_ >= pos][: self.per_call]
            out += pending
            if pending:
                self.positions[partition] = pending[-1].offset_ + 1
            elif partition not in self.eof_sent:
                self.eof_sent.add(partition)
                out.append(Msg(partition, self.high(partition), err=Err(EOF_CODE)))
        return out[:n]

    def close(self) -> None:
        self.closed = True


def run(changelog: Changelog, dbs: dict[int, Db], late: LateRecords | None = None,
        max_s: float = 30.0) -> restore.RestoreSummary:
    return restore.restore_partitions(
        bootstrap="unused:9092", topic=TOPIC, persisted={p: db.persisted() for p, db in dbs.items()},
        tps={p: (TOPIC, p) for p in dbs}, dbs=dbs, offset_key=OFFSET_KEY, late=late or LateRecords(),
        max_s=max_s, new_batch=Batch, consumer_factory=changelog)


def test_the_stand_in_end_of_partition_code_is_librdkafkas() -> None:
    from confluent_kafka import KafkaError

    assert KafkaError._PARTITION_EOF == EOF_CODE


def test_every_record_lands_in_its_partitions_database_with_the_offset_of_the_last_one() -> None:
    changelog = Changelog({
        0: [record(0, 0, "a", "1"), record(0, 1, "b", "2"), record(0, 2, "a", "3"), record(0, 3, "b", None)],
        1: [record(1, 0, "c", "9")],
    })
    dbs = {0: Db(), 1: Db()}
    summary = run(changelog, dbs)
    assert dbs[0].data == {b"a": b"3", OFFSET_KEY: b"3"}  # overwritten, then a tombstone deleted b
    assert dbs[1].data == {b"c": b"9", OFFSET_KEY: b"0"}
    assert (summary.partitions, summary.records, summary.kept, summary.dropped, summary.complete) == (2, 5, 5, 0, True)
    assert changelog.closed
    assert changelog.config["enable.auto.commit"] is False and changelog.config["enable.partition.eof"] is True


def test_a_database_that_holds_records_already_reads_only_what_lies_past_them() -> None:
    changelog = Changelog({0: [record(0, 0, "a", "old"), record(0, 1, "b", "kept"), record(0, 2, "a", "new")]})
    db = Db({b"a": b"old", b"b": b"kept", OFFSET_KEY: b"1"})
    summary = run(changelog, {0: db})
    assert db.data == {b"a": b"new", b"b": b"kept", OFFSET_KEY: b"2"}
    assert summary.records == 1


def test_partitions_already_at_their_end_or_empty_are_not_read() -> None:
    changelog = Changelog({0: [record(0, 0, "a", "1")], 1: []})
    dbs = {0: Db({b"a": b"1", OFFSET_KEY: b"0"}), 1: Db()}
    summary = run(changelog, dbs)
    assert (summary.partitions, summary.records, summary.complete) == (0, 0, True)
    assert dbs[0].writes == 0 and dbs[1].writes == 0


def test_a_compacted_partition_starts_at_its_first_offset_and_gaps_are_fine() -> None:
    changelog = Changelog({0: [record(0, 5, "a", "1"), record(0, 9, "b", "2"), record(0, 12, "a", "3")]},
                          low={0: 5})
    db = Db()
    summary = run(changelog, {0: db})
    assert db.data == {b"a": b"3", b"b": b"2", OFFSET_KEY: b"12"}
    assert summary.complete


def test_a_replaced_owners_late_write_is_left_out_and_the_offset_moves_past_it() -> None:
    # Owner A (generation 5), owner B (6), then A's write queued before its freeze and sent on waking.
    changelog = Changelog({0: [record(0, 0, "WH-EAST", "10", gen=5, ts_ms=1000),
                               record(0, 1, "WH-EAST", "20", gen=6, ts_ms=3000),
                               record(0, 2, "WH-EAST", "99", gen=5, ts_ms=2000)]}, per_call=10)
    db, late = Db(), LateRecords()
    summary = run(changelog, {0: db}, late)
    assert db.data == {b"WH-EAST": b"20", OFFSET_KEY: b"2"}
    assert (summary.kept, summary.dropped) == (2, 1)
    # Its key is handed to the owner, which writes its value again after it (tables/repair.py).
    assert summary.late_keys == [(0, b"WH-EAST")]
    # faust's recovery goes on with the same filter state: a later late write is left out too.
    assert not late.keep((TOPIC, 0), 2.5, 5)


def test_a_batch_of_only_late_records_still_moves_the_persisted_offset() -> None:
    changelog = Changelog({0: [record(0, 0, "k", "new", gen=6, ts_ms=3000),
                               record(0, 1, "k", "stale", gen=5, ts_ms=2000)]}, per_call=1)
    db = Db()
    run(changelog, {0: db})
    assert db.data == {b"k": b"new", OFFSET_KEY: b"1"}


def test_records_written_after_the_restore_began_are_left_to_fausts_recovery() -> None:
    changelog = Changelog({0: [record(0, 0, "a", "1"), record(0, 1, "a", "2")]})
    parts = {0: restore.PartitionRestore((TOPIC, 0), start=0, end=1)}
    batch = Batch()
    touched = restore.apply_messages(changelog.logs[0], parts, LateRecords(), lambda p: batch, EOF_CODE)
    assert touched == {0}
    assert batch.ops == [("put", b"a", b"1")]
    assert parts[0].last == 0 and parts[0].done


def test_an_end_of_partition_event_ends_a_partition_whose_tail_is_gone() -> None:
    parts = {0: restore.PartitionRestore((TOPIC, 0), start=0, end=10)}
    restore.apply_messages([record(0, 3, "a", "1"), Msg(0, 10, err=Err(EOF_CODE))], parts, LateRecords(),
                           lambda p: Batch(), EOF_CODE)
    assert parts[0].done and parts[0].last == 3


def test_an_end_of_partition_event_before_the_end_does_not_end_it() -> None:
    parts = {0: restore.PartitionRestore((TOPIC, 0), start=0, end=10)}
    restore.apply_messages([Msg(0, 4, err=Err(EOF_CODE))], parts, LateRecords(), lambda p: Batch(), EOF_CODE)
    assert not parts[0].done


def test_a_consumer_error_stops_the_restore_with_every_database_consistent() -> None:
    class Failing(Changelog):
        calls = 0

        def consume(self, n: int, timeout: float) -> list[Msg]:
            self.calls += 1
            if self.calls == 2:
                return [Msg(0, 0, err=Err(-195))]  # e.g. transport failure
            return super().consume(n, timeout)

    changelog = Failing({0: [record(0, i, f"k{i}", str(i)) for i in range(6)]}, per_call=2)
    db = Db()
    with pytest.raises(restore.RestoreError):
        run(changelog, {0: db})
    assert changelog.closed
    assert db.data == {b"k0": b"0", b"k1": b"1", OFFSET_KEY: b"1"}  # what it holds is what it names


def test_a_restore_past_its_budget_stops_where_its_databases_say() -> None:
    changelog = Changelog({0: [record(0, i, f"k{i}", str(i)) for i in range(10)]}, per_call=4)
    db = Db()
    summary = run(changelog, {0: db}, max_s=0.0)
    assert not summary.complete and summary.records == 0 and db.persisted() is None
    # The next restore (or faust's recovery) goes on from there, and finishes.
    summary = run(Changelog(changelog.logs, per_call=4), {0: db})
    assert summary.complete and db.persisted() == 9 and len(db.data) == 11
