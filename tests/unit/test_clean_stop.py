"""Local table files kept through a clean stop (peakroute/tables/clean_stop.py): which offset a
stopped partition's files hold, which directory a new worker process adopts, and how a store opens
adopted, own and unknown files — on real RocksDB databases, without Kafka."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("rocksdict")

from peakroute.tables import clean_stop as cs  # noqa: E402
from peakroute.tables import store as rocks  # noqa: E402

GEN = 7


@pytest.fixture(autouse=True)
def no_adopted_files_left():
    yield
    cs.ADOPTED.clear()


# ---- which offset a stopped partition's files hold ----------------------------------------------

def test_nothing_written_since_the_restore_keeps_the_restores_end() -> None:
    assert cs.marker_offset(41, (41, 3), GEN) == 41, "the last record is the one the restore ended at"


def test_the_workers_own_last_write_is_the_offset() -> None:
    assert cs.marker_offset(41, (90, GEN), GEN) == 90
    assert cs.marker_offset(None, (12, GEN), GEN) == 12, "nothing restored, then this worker wrote"


def test_a_last_record_of_another_writer_keeps_nothing() -> None:
    assert cs.marker_offset(41, (90, GEN + 1), GEN) is None, "a new owner wrote after this worker"
    assert cs.marker_offset(41, (90, GEN - 1), GEN) is None, "a replaced owner's late write came last"
    assert cs.marker_offset(41, (90, None), GEN) is None, "a record without a generation (an older build)"


def test_a_changelog_behind_the_files_or_empty_keeps_nothing() -> None:
    assert cs.marker_offset(41, (30, GEN), GEN) is None, "the changelog ends before the restore did"
    assert cs.marker_offset(41, None, GEN) is None
    assert cs.marker_offset(None, None, GEN) is None


def test_files_are_trusted_for_a_bounded_time_from_when_they_were_consistent() -> None:
    assert cs.trusted(1000.0, 1000.0 + 1799, 1800)
    assert not cs.trusted(1000.0, 1000.0 + 1801, 1800)
    assert not cs.trusted(None, 1000.0, 1800)
    assert not cs.trusted(2000.0, 1000.0, 1800), "a clock that went back: not trusted"


def test_the_marker_round_trips_and_a_foreign_one_is_ignored() -> None:
    m = cs.CleanStop("app", 6, 123.5, GEN, {"order-routing": {0: 10, 3: 99}, "stock-holds": {}},
                     {"order-routing": "id-1", "stock-holds": "id-2"})
    assert cs.CleanStop.from_json(m.to_json()) == m
    assert cs.CleanStop.from_json(b"{not json") is None
    assert cs.CleanStop.from_json(m.to_json().replace(b'"version":1', b'"version":2')) is None
    assert cs.CleanStop.from_json(b'{"version":1}') is None


# ---- which directory a new worker process adopts ---------------------------------------------------

def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    return int(done.stdout)


def stopped_dir(root: Path, pid: int, marker: cs.CleanStop | None, files: list[str]) -> Path:
    d = root / f"worker-{pid}"
    for name in files:
        (d / name).mkdir(parents=True)
        (d / name / "CURRENT").write_text("x")
    d.mkdir(parents=True, exist_ok=True)
    if marker is not None:
        cs.write_marker(d, marker)
    return d


def alive(pid: int) -> bool:
    return pid in (os.getpid(), os.getppid())


def same_topics(tables: list[str]) -> dict[str, str]:
    """The changelog topics' ids now: those the markers of these tests name."""
    return {t: f"id-{t}" for t in tables}


def ids(*tables: str) -> dict[str, str]:
    return same_topics(list(tables))


def test_the_newest_clean_stop_is_adopted_then_the_next_and_crashed_directories_are_removed(tmp_path: Path) -> None:
    now = time.time()
    older, newer, crashed = dead_pid(), dead_pid(), dead_pid()
    stopped_dir(tmp_path, older, cs.CleanStop("app", 6, now - 100, 3, {"stock-levels": {0: 5}}, ids("stock-levels")), ["stock-levels-0.db"])
    stopped_dir(tmp_path, newer, cs.CleanStop("app", 6, now - 10, 4, {"stock-levels": {1: 8}, "order-routing": {2: 50}},
                                          ids("stock-levels", "order-routing")),
                ["stock-levels-1.db", "order-routing-2.db", "order-routing-4.db", "stock-holds-1.db"])
    stopped_dir(tmp_path, crashed, None, ["order-routing-0.db"])
    live = stopped_dir(tmp_path, os.getppid(), None, ["order-routing-5.db"])

    mine, marker = cs.adopt(tmp_path, os.getpid(), "app", 6, 1800, alive, same_topics, now=now)

    assert mine == tmp_path / f"worker-{os.getpid()}" and marker is not None and marker.generation == 4
    assert sorted(p.name for p in mine.iterdir()) == ["order-routing-2.db", "stock-levels-1.db"], \
        "the databases the marker does not name are removed, and the marker itself"
    assert cs.ADOPTED == {"stock-levels": {1: (8, now - 10)}, "order-routing": {2: (50, now - 10)}}
    for pid in (newer, crashed):
        assert not (tmp_path / f"worker-{pid}").exists()
    assert (live / "order-routing-5.db").exists(), "a running process's files are left alone"
    assert (tmp_path / f"worker-{older}" / cs.MARKER).exists(), "left for the next worker to start"
    second, marker = cs.adopt(tmp_path, os.getppid() + 10**6, "app", 6, 1800, alive, same_topics, now=now)
    assert marker is not None and marker.generation == 3 and not (tmp_path / f"worker-{older}").exists()
    assert sorted(p.name for p in second.iterdir()) == ["stock-levels-0.db"]


@pytest.mark.parametrize("why, marker", [
    ("too old", cs.CleanStop("app", 6, time.time() - 1801, 4, {"stock-levels": {1: 8}}, ids("stock-levels"))),
    ("another app", cs.CleanStop("other", 6, time.time(), 4, {"stock-levels": {1: 8}}, ids("stock-levels"))),
    ("another partition count", cs.CleanStop("app", 12, time.time(), 4, {"stock-levels": {1: 8}}, ids("stock-levels"))),
])
def test_a_clean_stop_that_does_not_fit_is_not_adopted(tmp_path: Path, why: str, marker: cs.CleanStop) -> None:
    pid = dead_pid()
    stopped_dir(tmp_path, pid, marker, ["stock-levels-1.db"])
    mine, adopted = cs.adopt(tmp_path, os.getpid(), "app", 6, 1800, alive, same_topics)
    assert adopted is None and list(mine.iterdir()) == [], why
    assert not (tmp_path / f"worker-{pid}").exists()


def test_a_table_whose_changelog_topic_was_created_again_is_not_adopted(tmp_path: Path) -> None:
    """Offsets start again at 0 in a topic deleted and created again (a wiped broker): the marker's
    offsets would skip its records.  The topic id tells it."""
    pid = dead_pid()
    marker = cs.CleanStop("app", 6, time.time(), 4, {"stock-levels": {1: 8}, "order-routing": {2: 50}},
                          ids("stock-levels", "order-routing"))
    stopped_dir(tmp_path, pid, marker, ["stock-levels-1.db", "order-routing-2.db"])
    mine, adopted = cs.adopt(tmp_path, os.getpid(), "app", 6, 1800, alive,
                             lambda tables: {**same_topics(tables), "order-routing": "a-new-id"})
    assert adopted is not None and adopted.tables == {"stock-levels": {1: 8}}
    assert sorted(p.name for p in mine.iterdir()) == ["stock-levels-1.db"]

    def unreachable(tables: list[str]) -> dict[str, str]:
        raise TimeoutError("no broker")

    pid = dead_pid()
    stopped_dir(tmp_path, pid, marker, ["stock-levels-1.db"])
    mine, adopted = cs.adopt(tmp_path, os.getpid(), "app", 6, 1800, alive, unreachable)
    assert adopted is None and list(mine.iterdir()) == [], "the ids not read: nothing adopted"


def test_a_clean_stop_under_the_same_pid_is_adopted(tmp_path: Path) -> None:
    """A container's worker is pid 1 at every start: the directory named after our own pid is a
    finished process's too."""
    stopped_dir(tmp_path, os.getpid(), cs.CleanStop("app", 6, time.time(), 4, {"stock-levels": {1: 8}},
                                                    ids("stock-levels")), ["stock-levels-1.db", "stock-holds-1.db"])
    mine, adopted = cs.adopt(tmp_path, os.getpid(), "app", 6, 1800, alive, same_topics)
    assert adopted is not None and sorted(p.name for p in mine.iterdir()) == ["stock-levels-1.db"]


def test_never_keeping_restores_in_full(tmp_path: Path) -> None:
    pid = dead_pid()
    stopped_dir(tmp_path, pid, cs.CleanStop("app", 6, time.time(), 4, {"stock-levels": {1: 8}}, ids("stock-levels")), ["stock-levels-1.db"])
    mine, adopted = cs.adopt(tmp_path, os.getpid(), "app", 6, 1800, alive, same_topics, keep=False)
    assert adopted is None and list(mine.iterdir()) == []


def test_a_marker_is_adopted_once(tmp_path: Path) -> None:
    """The adopting process removes the marker at once: if it crashes, its files (changed since)
    must not be adopted by the next one."""
    pid = dead_pid()
    stopped_dir(tmp_path, pid, cs.CleanStop("app", 6, time.time(), 4, {"stock-levels": {1: 8}}, ids("stock-levels")), ["stock-levels-1.db"])
    first = dead_pid()  # the adopting process, then dead
    mine, adopted = cs.adopt(tmp_path, first, "app", 6, 1800, alive, same_topics)
    assert adopted is not None and not (mine / cs.MARKER).exists()
    again, adopted = cs.adopt(tmp_path, os.getpid(), "app", 6, 1800, alive, same_topics)
    assert adopted is None and list(again.iterdir()) == [] and not mine.exists()


# ---- how a store opens adopted, own and unknown files ----------------------------------------------

def make_store(tabledir: Path, name: str = "t-keep"):
    import faust

    rocks.register()
    app = faust.App(name, broker="kafka://127.0.0.1:1", store=rocks.STORE_URL, tabledir=str(tabledir),
                    key_serializer="raw", value_serializer="raw")
    table = app.Table("stock-levels", default=None, partitions=4, options=dict(rocks.ROCKSDB_OPTIONS))
    return table.data


def test_a_clean_stop_flushes_the_databases_and_an_adopted_one_resumes_from_the_markers_offset(tmp_path: Path) -> None:
    async def run() -> None:
        store = make_store(tmp_path)
        db = store._db_for_partition(1)
        db.put(b"k", b"v")  # no write-ahead log: only a flush makes this survive
        db.put(store.offset_key, b"41")
        store._db_for_partition(2)
        await store.stop()
        assert store.stopped_offsets == {1: 41, 2: None}
        assert not store.used_after_stop

        cs.ADOPTED.clear()
        cs.ADOPTED["stock-levels"] = {1: (90, time.time() - 5)}
        again = make_store(tmp_path)
        db = again._db_for_partition(1)
        assert db.get(b"k") == b"v", "the flushed write survived"
        assert db.get(again.offset_key) == b"90", "caught up from the marker's offset"
        assert cs.ADOPTED["stock-levels"] == {}, "taken once"
        assert again._db_for_partition(2).get(b"k") is None
        await again.stop()
        assert again.stopped_offsets == {1: 90, 2: None}
        cs.write_marker(tmp_path, cs.CleanStop("t-keep", 4, time.time(), GEN, {"stock-levels": {1: 90}}, {}))
        again._del(b"k")  # faust's `del table[k]` after the stop: its tombstone leaves, no database takes it
        assert again.used_after_stop and not (tmp_path / cs.MARKER).exists(), "the marker no longer holds"
        again.used_after_stop = False
        cs.write_marker(tmp_path, cs.CleanStop("t-keep", 4, time.time(), GEN, {"stock-levels": {1: 90}}, {}))
        again._db_for_partition(1)  # a rebalance racing the stop opens a database again
        assert again.used_after_stop and not (tmp_path / cs.MARKER).exists(), "the marker no longer holds"
        again._dbs[1].close()
        again._dbs.clear()

        # Files nobody vouches for (this process did not adopt them nor close them itself) are not used.
        third = make_store(tmp_path)
        assert third._db_for_partition(1).get(b"k") is None
        third._dbs[1].close()
        third._dbs.clear()

    asyncio.run(run())


def test_a_revoked_partitions_files_are_caught_up_only_while_trusted(tmp_path: Path) -> None:
    from faust.types import TP

    async def run() -> None:
        store = make_store(tmp_path)
        topic = store.table.changelog_topic.get_topic_name()
        store._db_for_partition(3).put(b"k", b"v")
        store._db_for_partition(3).flush()
        store.revoke_partitions(store.table, {TP(topic, 3)})
        assert 3 in store._consistent_at
        import gc
        gc.collect()  # faust drops the database object (RocksDB's lock goes with it)
        assert store._db_for_partition(3).get(b"k") == b"v", "re-assigned soon: caught up from its files"
        store._dbs[3].flush()
        store.revoke_partitions(store.table, {TP(topic, 3)})
        gc.collect()
        store._consistent_at[3] -= store.trust_s + 1
        assert store._db_for_partition(3).get(b"k") is None, "re-assigned too late: restored in full"
        store._dbs[3].close()
        store._dbs.clear()

    asyncio.run(run())
