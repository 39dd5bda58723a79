"""The RocksDB table store's own rules (peakroute/tables/store.py), on real RocksDB files.

faust's store is not built here (it needs a running app); the two rules we changed are exercised
on a bare instance whose per-partition databases are real rocksdict databases.
"""

from __future__ import annotations

import os
import subprocess
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

rocksdict = pytest.importorskip("rocksdict")

from faust.streams import _current_event  # noqa: E402

from peakroute.tables import store as rocks  # noqa: E402


def bare_store(tmp_path: Path, partitions: int) -> rocks.Store:
    s = rocks.Store.__new__(rocks.Store)
    s._dbs = {p: rocksdict.Rdict(str(tmp_path / f"p{p}"), options=rocksdict.Options(raw_mode=True))
              for p in range(partitions)}
    s._key_index = {}
    return s


class FakeEvent:
    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


_keep: list[FakeEvent] = []


def with_event(partition: int | None):
    """faust keeps the current event as a weak reference in a context variable."""
    if partition is None:
        return _current_event.set(None)
    _keep.append(FakeEvent(partition))
    return _current_event.set(weakref.ref(_keep[-1]))


def test_a_key_is_found_whatever_partition_the_current_event_is_on(tmp_path: Path) -> None:
    """faust's own store looks only in the current event's partition: a batch agent reading order
    B while faust's current event is order A (another partition) would see no order B."""
    s = bare_store(tmp_path, 3)
    s._dbs[2].put(b"order-B", b"state-B")
    for partition in (0, 1, 2, None):
        token = with_event(partition)
        try:
            assert s._get(b"order-B") == b"state-B"
            assert s._contains(b"order-B")
            assert s._get(b"order-none") is None
            assert not s._contains(b"order-none")
        finally:
            _current_event.reset(token)


def test_only_assigned_partitions_are_searched(tmp_path: Path) -> None:
    """A revoked partition's database leaves ``_dbs`` (faust's revoke): its keys are not read."""
    s = bare_store(tmp_path, 2)
    s._dbs[1].put(b"k", b"v")
    del s._dbs[1]
    token = with_event(0)
    try:
        assert s._get(b"k") is None
    finally:
        _current_event.reset(token)


def test_the_current_events_partition_wins_then_the_key_is_remembered(tmp_path: Path) -> None:
    s = bare_store(tmp_path, 2)
    s._dbs[1].put(b"k", b"from-1")
    token = with_event(0)
    try:
        assert s._get(b"k") == b"from-1"
        assert s._key_index[b"k"] == 1
    finally:
        _current_event.reset(token)


def test_each_worker_process_gets_its_own_empty_directory_and_dead_ones_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    (tmp_path / f"worker-{dead_pid}" / "order-state-0.db").mkdir(parents=True)
    live = tmp_path / f"worker-{os.getppid()}"
    (live / "x").mkdir(parents=True)
    mine = rocks.worker_tabledir(tmp_path, "t", 6, "127.0.0.1:1")
    assert mine == tmp_path / f"worker-{os.getpid()}" and list(mine.iterdir()) == []
    assert not (tmp_path / f"worker-{dead_pid}").exists(), "a finished worker's files are removed"
    assert (live / "x").exists(), "a running process's files are left alone"
    (mine / "leftover").mkdir()
    again = rocks.worker_tabledir(tmp_path, "t", 6, "127.0.0.1:1")
    assert again == mine and list(again.iterdir()) == [], "a restart in the same process starts empty"


def test_the_size_is_rocksdbs_estimate_not_a_scan(tmp_path: Path) -> None:
    """``len(table)`` feeds a gauge every 5 s; faust's own count iterates every key."""
    s = bare_store(tmp_path, 2)
    s._dbs_for_actives = lambda: iter(s._dbs.values())
    for i in range(300):
        s._dbs[i % 2].put(b"order-%d" % i, b"state")
    assert s._size() == 300


def test_get_value_is_one_lookup_and_the_partition_hint_only_orders_the_search(tmp_path: Path) -> None:
    """``table_get`` reads in one lookup (faust's ``Table.get`` is ``in`` then ``[]``); the hint
    says where to look first, and a wrong hint still finds the key — unless the caller says the hint
    is exact (it owns the key's partition), when a miss there is the answer."""
    s = bare_store(tmp_path, 3)
    s._encode_key = lambda key: key.encode()
    s._decode_value = lambda raw: raw.decode()
    s._dbs[2].put(b"order-B", b"state-B")
    looked: list[int] = []
    for p, db in list(s._dbs.items()):
        class Spy:
            def __init__(self, db: Any, p: int) -> None:
                self.db, self.p = db, p

            def get(self, key: bytes) -> Any:
                looked.append(self.p)
                return self.db.get(key)

            def key_may_exist(self, key: bytes) -> bool:
                return self.db.key_may_exist(key)
        s._dbs[p] = Spy(db, p)
    token = with_event(0)
    try:
        assert s.get_value("order-B", partition=2) == "state-B" and looked == [2]
        looked.clear()
        assert s.get_value("order-B", partition=1) == "state-B" and looked[-1] == 2
        assert s.get_value("order-none", "dflt", partition=2) == "dflt"
        # exact: the caller owns the key's partition (an agent's BatchWrites), so a miss there is
        # the answer — no bloom filter of another partition is probed, no other partition read.
        looked.clear()
        probed: list[int] = []
        for p, spy in list(s._dbs.items()):
            spy.key_may_exist = lambda key, p=p, db=spy.db: probed.append(p) or db.key_may_exist(key)
        assert s.get_value("order-B", "dflt", partition=1, exact=True) == "dflt" and looked == [1] and probed == []
        assert s.get_value("order-B", partition=2, exact=True) == "state-B"
        assert s.get_value("order-B", partition=7, exact=True) == "state-B", "a partition not open here: searched"
        table = SimpleNamespace(data=s)
        assert rocks.table_get(table, "order-B", None, 0) == "state-B"
        assert rocks.table_get({"k": 1}, "k") == 1, "anything else: its own get (memory:// tables, fakes)"
    finally:
        _current_event.reset(token)


class RecordingOutbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, Any, int | None]] = []

    def send(self, topic: str, key: Any, value: Any, partition: int | None = None, headers: Any = None) -> None:
        self.sent.append((topic, key, value, partition))


def test_a_batch_write_leaves_what_faust_would_on_the_changelog_and_in_rocksdb(tmp_path: Path) -> None:
    """``Store.write``/``delete`` (a batch's flush) skip faust's per-write machinery; the changelog
    records and the stored bytes must be exactly what ``table[key] = value`` would leave."""
    import faust

    from peakroute.agents.common import BatchWrites, in_event
    from peakroute.streams import codecs  # noqa: F401 - registers the orjson codec
    from peakroute.streams.outbox import carry_changelogs
    from peakroute.tables.packed import PackedTable

    rocks.register()
    app = faust.App("t-write", broker="kafka://127.0.0.1:1", store=rocks.STORE_URL, tabledir=str(tmp_path),
                    key_serializer="raw", value_serializer="raw")
    schema = faust.Schema(key_serializer="orjson", value_serializer="orjson")
    levels = app.Table("stock-levels", default=None, partitions=4, schema=schema,
                       options=dict(rocks.ROCKSDB_OPTIONS))
    states = app.Table("order-state", default=None, partitions=4, schema=schema, value_type=bytes,
                       options=dict(rocks.ROCKSDB_OPTIONS))
    outbox = RecordingOutbox()
    carry_changelogs(app, outbox, [levels, states])  # type: ignore[arg-type]

    async def run() -> None:  # faust objects want a running loop
        for table, value in ((levels, [10, 2, 0]), (PackedTable(states), {"status": "routed", "n": 1})):
            faust_table = table.table if isinstance(table, PackedTable) else table
            store = faust_table.data
            assert isinstance(store, rocks.Store)
            for key in ("tmall:1", 'jd:"q"\\', "douyin:订单\u0001", "wxmini:😀"):
                assert store._encode_key(key) == super(rocks.Store, store)._encode_key(key), key
            event = FakeEvent(2)
            event.message.topic = "peakroute.orders"
            faust_table._verified_source_topics_for_partitions.add("peakroute.orders")  # no broker here
            _keep.append(event)
            in_event(event)  # type: ignore[arg-type]
            table["by-faust"] = value  # faust's own path
            faust_record = outbox.sent[-1]
            writes = BatchWrites(table)
            writes.event = event  # type: ignore[assignment]
            writes["by-batch"] = value
            fast_writes = []
            store.write = lambda *a, _w=store.write, _seen=fast_writes: _seen.append(a) or _w(*a)
            writes.flush()
            assert len(fast_writes) == 1, "the batch took the store's own write path"
            batch_record = outbox.sent[-1]
            assert batch_record[0] == faust_record[0] and batch_record[3] == faust_record[3] == 2
            assert batch_record[2] == faust_record[2], "the same value bytes"
            assert batch_record[1] == faust_record[1].replace(b"by-faust", b"by-batch"), "the same key encoding"
            db = store._dbs[2]
            assert db.get(batch_record[1]) == db.get(faust_record[1]) == faust_record[2]
            assert writes.get("by-batch") == writes.get("by-faust") == value
            # delete: a tombstone, gone from the store; a missing key sends nothing
            del writes["by-batch"]
            del writes["never-written"]
            n = len(outbox.sent)
            writes.flush()
            assert outbox.sent[n:] == [(batch_record[0], batch_record[1], None, 2)]
            assert db.get(batch_record[1]) is None and writes.get("by-batch") is None

    import asyncio

    asyncio.run(run())


def test_recovery_leaves_out_a_replaced_owners_late_writes_and_moves_past_them(tmp_path: Path) -> None:
    """``Store.apply_changelog_batch`` (faust's recovery) without the records tables/stale.py calls
    late; the persisted offset still moves past them, so they are not read again."""
    from peakroute.tables.stale import LateRecords

    store = bare_store(tmp_path, 2)
    store._late = LateRecords()
    store._late_keys = []
    persisted: dict[Any, int] = {}
    store.set_persisted_offset = lambda tp, offset: persisted.__setitem__(tp, offset)
    store.use_rocksdict = True
    store._db_for_partition = lambda p: store._dbs[p]
    store.table = SimpleNamespace(name="stock-holds")

    def record(offset: int, key: bytes, value: bytes, gen: int | None, ts: float) -> Any:
        headers = [("peakroute-gen", str(gen).encode())] if gen is not None else []
        return SimpleNamespace(message=SimpleNamespace(
            tp=("holds-changelog", 1), topic="holds-changelog", partition=1, offset=offset, key=key, value=value,
            timestamp=ts, headers=headers))

    batch = [record(0, b"k", b"owner A", 5, 100.0),       # owner A (generation 5)
             record(1, b"k", b"owner B", 6, 130.0),       # owner B took over (6), wrote k
             record(2, b"k", b"zombie A", 5, 101.0),      # A's write queued before its freeze, sent on waking
             record(3, b"j", b"no header", None, 50.0)]   # an old build's record: kept
    store.apply_changelog_batch(batch, to_key=None, to_value=None)
    assert store._dbs[1].get(b"k") == b"owner B"
    assert store._dbs[1].get(b"j") == b"no header"
    assert persisted[("holds-changelog", 1)] == 3
    assert store._late.dropped == 1
    # The owner writes the left-out key again with the value it holds (tables/repair.py) ...
    assert store.late_keys() == [(1, b"k")]
    assert store.late_keys() == [], "handed over once"
    sent: list[tuple[int, bytes, bytes | None]] = []
    store.table.send_changelog_bytes = lambda partition, key, value: sent.append((partition, key, value))
    store.repair(b"k", 1)
    # ... and a tombstone for a key it does not hold.
    store.repair(b"gone", 1)
    assert sent == [(1, b"k", b"owner B"), (1, b"gone", None)]
