"""Local table files kept through a clean stop: a restarted worker reads only what came after it.

Why: a worker start restores its partitions' tables from their changelogs before it processes
anything (tables/restore.py), and what it reads grows with the day's live orders and holds — at
50,000 orders/s over 256 partitions, ~50 s per partition after an hour of peak
(benchmarks/RESULTS.md, capacity model).  A rolling restart (a new build, a config change) stops
every worker once; each would stand still that long.  Kafka Streams keeps its stores on disk
through a clean shutdown with a checkpoint file of changelog offsets for the same reason.

How, and why it is safe:

* **At a clean stop** (SIGTERM: faust stops the consumer, waits until every batch is done, then
  stops the tables), each table store flushes and closes its databases and remembers, per
  partition, the offset its last restore ended at (:meth:`tables.store.Store.stop`).  Once both
  outboxes are flushed (every changelog record this process sent is acknowledged), the worker
  reads the *last record* of each of those changelog partitions and writes a marker file,
  ``clean-stop.json``, naming for each partition the changelog offset its files hold everything up
  to (:func:`marker_offset`): the last record if this process wrote it (its writer generation is
  the worker's), or the restore's end if nothing was written since.  A partition whose last record
  was written by anyone else (a new owner already, or a replaced owner's late write) is left out:
  its files are deleted and it is restored in full.  No marker at all when a store was used after
  it stopped (a rebalance racing the stop reopens databases; a marker already written is then
  removed), when the event loop had been frozen long enough for the group to give the partitions
  away (agents.common.FreezeWatch), or when a flush failed.  A crash (kill -9,
  an exit on a plumbing failure) writes no marker: the next start restores in full, as before,
  because a crash can leave the local files *ahead* of the changelog (tables/store.py).
* **At the next start on the same state dir** (:func:`adopt`, under a file lock: workers sharing a
  state dir start concurrently), the newest directory of a finished process that holds a marker
  young enough, for the same changelog topics (their Kafka topic ids: a topic deleted and created
  again starts its offsets again), is renamed to the new process's own; the marker is removed at once (a crash of the
  adopting process must not leave a marker that no longer describes the files), the databases it
  does not name are deleted, and each named database gets its offset as faust's persisted offset
  when it is first opened — so the bulk restore and faust's recovery read only the records after
  it, written by whoever owned the partition meanwhile.  The other finished directories are
  deleted as before, except those with a usable marker: several workers sharing a state dir and
  restarted together adopt one each.
* **A file is trusted for at most half the changelogs' ``delete.retention.ms``** from the moment it
  was last consistent (its clean stop, or its revocation within one process), counted when it is
  opened: a key deleted by another owner meanwhile is deleted by its tombstone record, and Kafka
  removes a tombstone ``delete.retention.ms`` after compaction reached it — a file older than that
  would keep the key (a released hold back as reserved units, an order back from deletion).  An
  older file is deleted when it is opened and the partition restored in full.

It helps restarts, not takeovers after a crash: a worker taking over a dead worker's partitions
has no files for them (standby replicas would be the lever there; they stay off, streams/app.py).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .stale import generation_of

log = logging.getLogger("peakroute.clean_stop")

#: The marker file in a worker's table directory.
MARKER = "clean-stop.json"
#: The marker's format; a marker of another version is ignored (the files are restored in full).
VERSION = 1


@dataclass
class CleanStop:
    """What a cleanly stopped worker process left in its table directory."""

    app_id: str
    partitions: int  #: partitions per topic (a different count: the files are not adopted)
    stopped_at: float  #: wall clock, seconds
    generation: int  #: the consumer-group generation it held its partitions in
    #: table name -> partition -> offset of the last changelog record its database holds
    tables: dict[str, dict[int, int]] = field(default_factory=dict)
    #: table name -> its changelog topic's Kafka topic id: offsets mean nothing in a topic deleted
    #: and created again (a wiped broker, a reset) — its records start again at 0
    topic_ids: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps({"version": VERSION, "app_id": self.app_id, "partitions": self.partitions,
                             "stopped_at": self.stopped_at, "generation": self.generation,
                             "tables": {name: {str(p): o for p, o in parts.items()}
                                        for name, parts in self.tables.items()},
                             "topic_ids": self.topic_ids})

    @classmethod
    def from_json(cls, raw: bytes) -> CleanStop | None:
        """The marker, or None when it is not one this build wrote (another version, damaged)."""
        try:
            d = orjson.loads(raw)
            if d.get("version") != VERSION:
                return None
            return cls(app_id=str(d["app_id"]), partitions=int(d["partitions"]), stopped_at=float(d["stopped_at"]),
                       generation=int(d["generation"]),
                       tables={str(name): {int(p): int(o) for p, o in parts.items()}
                               for name, parts in d["tables"].items()},
                       topic_ids={str(k): str(v) for k, v in d["topic_ids"].items()})
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None


def db_filename(table: str, partition: int) -> str:
    """faust's file name for a table partition's database (``Store.partition_path``)."""
    return f"{table}-{partition}.db"


def marker_offset(restored_to: int | None, last: tuple[int, int | None] | None, generation: int) -> int | None:
    """The changelog offset a stopped partition's database holds everything up to, or None when
    that cannot be told (the partition is then restored in full next time).

    ``restored_to``: the offset its last restore ended at (faust's persisted offset: the last
    record applied or left out), None for none.  ``last``: (offset, writer generation) of the
    partition's last changelog record now, None for an empty partition.  ``generation``: the
    stopping worker's.

    Every changelog record after the restore's end was written by this worker while it owned the
    partition — unless another worker wrote too: a new owner (its generation is higher, and its
    records come last) or a replaced owner's late write.  So the last record decides: none since
    the restore, or one of this worker's own (its database holds it and everything before)."""
    if last is None:  # empty: nothing to keep (or its records vanished: not this topic's files)
        return None
    offset, writer = last
    if restored_to is not None and offset == restored_to:
        return offset
    if writer == generation and (restored_to is None or offset > restored_to):
        return offset
    return None


def trusted(consistent_at: float | None, now: float, trust_s: float) -> bool:
    """Whether a database last known consistent with its changelog at ``consistent_at`` (wall
    clock) may still be caught up from there (module docstring: tombstones expire)."""
    return consistent_at is not None and 0 <= now - consistent_at <= trust_s


#: table name -> partition -> (offset, stopped_at) of the databases this process adopted and has
#: not opened yet (tables/store.Store._open_for_partition takes them from here).
ADOPTED: dict[str, dict[int, tuple[int, float]]] = {}


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    with open(root / ".lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _usable(old: Path, app_id: str, partitions: int, trust_s: float, now: float) -> CleanStop | None:
    """The marker in a finished process's directory, if this worker may adopt it."""
    try:
        marker = CleanStop.from_json((old / MARKER).read_bytes())
    except OSError:
        return None
    if marker is not None and not (marker.app_id == app_id and marker.partitions == partitions
                                    and trusted(marker.stopped_at, now, trust_s)):
        log.info("table files of %s not kept: its clean stop is %.0f s old (kept at most %.0f s), "
                 "or for another app id or partition count", old, now - marker.stopped_at, trust_s)
        return None
    return marker


def _same_topics(old: Path, marker: CleanStop, topic_ids: Callable[[list[str]], dict[str, str]]) -> CleanStop | None:
    """``marker`` without the tables whose changelog topics were created again since; None when
    the topics' ids cannot be read or no table is left."""
    try:
        now_ids = topic_ids(sorted(marker.tables))
    except Exception as exc:  # noqa: BLE001 - restored in full
        log.warning("table files of %s not kept: the changelog topics' ids not read: %r", old, exc)
        return None
    moved = sorted(t for t in marker.tables if now_ids.get(t) != marker.topic_ids.get(t))
    if moved:
        log.info("table files of %s not kept for table(s) %s: their changelog topics were created again "
                 "since the stop", old, moved)
    marker.tables = {t: parts for t, parts in marker.tables.items() if t not in moved}
    return marker if any(marker.tables.values()) else None


def adopt(root: Path, pid: int, app_id: str, partitions: int, trust_s: float, alive: Callable[[int], bool],
          topic_ids: Callable[[list[str]], dict[str, str]], now: float | None = None,
          keep: bool = True) -> tuple[Path, CleanStop | None]:
    """This process's table directory under ``root`` (``worker-<pid>``): the newest finished
    process's directory with a marker young enough, renamed, or a new empty one; the directories of
    other finished processes are removed, but for those with a usable marker (the next to start
    adopts one).  Records the adopted databases in :data:`ADOPTED`.
    ``topic_ids``: table names -> their changelog topics' ids now (a table whose topic is not the
    one the marker names is not adopted; if it raises, nothing is).  ``keep=False``: never adopt
    (every start restores in full)."""
    now = time.time() if now is None else now
    root.mkdir(parents=True, exist_ok=True)
    mine = root / f"worker-{pid}"
    adopted: CleanStop | None = None
    with _locked(root):
        finished: dict[Path, CleanStop | None] = {}  # finished process's directory -> usable marker
        for old in root.glob("worker-*"):
            try:
                other = int(old.name.split("-", 1)[1])
            except ValueError:
                continue
            if other == pid or not alive(other):  # our own pid's too: a container's worker is pid 1 each time
                finished[old] = _usable(old, app_id, partitions, trust_s, now) if keep else None
        usable = [(m, d) for d, m in finished.items() if m is not None]
        if usable:
            marker, newest = max(usable, key=lambda u: u[0].stopped_at)
            adopted = _same_topics(newest, marker, topic_ids)
            if adopted is None:
                finished[newest] = None  # removed below
            else:
                del finished[newest]
                _take(newest, mine, adopted, now)
        for old, marker in finished.items():
            if marker is None:  # one with a usable marker is left for the next worker to start
                _remove(old)
                log.info("removed table files of a finished worker process: %s", old)
        mine.mkdir(exist_ok=True)
    return mine, adopted


def _take(old: Path, mine: Path, adopted: CleanStop, now: float) -> None:
    """Make ``old`` this process's directory with the databases ``adopted`` names, and record them."""
    if old != mine:
        old.rename(mine)
    (mine / MARKER).unlink()  # the files change from now on: never adopted twice
    wanted = {db_filename(t, p) for t, parts in adopted.tables.items() for p in parts}
    for path in mine.iterdir():
        if path.name not in wanted:
            _remove(path)
    ADOPTED.clear()
    for table, parts in adopted.tables.items():
        ADOPTED[table] = {p: (o, adopted.stopped_at) for p, o in parts.items()}
    log.info("kept the table files of a cleanly stopped worker process (%s, stopped %.0f s ago): "
             "%d partition database(s); only the changelog records after its stop are read",
             old.name, now - adopted.stopped_at, len(wanted))


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_marker(tabledir: Path, marker: CleanStop) -> Path:
    """Write the marker atomically (a crash mid-write leaves none)."""
    path = Path(tabledir) / MARKER
    tmp = path.with_name(f".{MARKER}.{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as fh:
        fh.write(marker.to_json())
        fh.flush()
        os.fsync(fh.fileno())
    tmp.rename(path)
    return path


def last_records(bootstrap: str, topic: str, partitions: list[int],
                 timeout_s: float = 10.0) -> dict[int, tuple[int, int | None] | None]:
    """Partition -> (offset, writer generation) of the last record of each of ``partitions`` of
    ``topic``, or None for an empty partition.  Raises when a partition cannot be read in time."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"peakroute-clean-stop-{uuid.uuid4().hex[:12]}",
                     "enable.auto.commit": False, "enable.partition.eof": False,
                     "client.id": "peakroute-worker-clean-stop"})
    out: dict[int, tuple[int, int | None] | None] = {}
    try:
        assignment = []
        ends: dict[int, int] = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high <= low:
                out[p] = None
            else:
                ends[p] = high
                assignment.append(TopicPartition(topic, p, high - 1))
        if assignment:
            consumer.assign(assignment)
        deadline = time.monotonic() + timeout_s
        while len(out) < len(partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: last record of partition(s) {sorted(set(ends) - set(out))} not read")
            for msg in consumer.consume(len(ends), 0.2):
                if msg.error() is not None:
                    raise RuntimeError(f"{topic}[{msg.partition()}]: {msg.error()}")
                p = msg.partition()
                if p in ends and p not in out and msg.offset() >= ends[p] - 1:
                    out[p] = (msg.offset(), generation_of(msg.headers()))
    finally:
        consumer.close()
    return out


def topic_ids(bootstrap: str, topics: list[str], timeout_s: float = 10.0) -> dict[str, str]:
    """Topic name -> Kafka topic id (a topic created again gets a new one)."""
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "client.id": "peakroute-worker-clean-stop"})
    futures = admin.describe_topics(TopicCollection(list(topics)), request_timeout=timeout_s)
    return {name: str(f.result(timeout_s).topic_id) for name, f in futures.items()}


def install(app: Any, tables: list[Any], outboxes: list[Any], bootstrap: str) -> None:
    """At a clean stop, once the outboxes are flushed, write the marker for the tables whose
    stores stopped cleanly (module docstring).  Tables on our RocksDB store only."""
    import asyncio

    from ..agents.common import GUARDS
    from .store import Store

    async def checkpoint(*_args: object, **_kwargs: object) -> None:
        stores = [(t.name, t.data, t.changelog_topic.get_topic_name()) for t in tables]
        if not any(isinstance(s, Store) and s.stopped_offsets is not None for _, s, _ in stores):
            return  # nothing was assigned: nothing to keep
        tabledir = Path(app.conf.tabledir)
        try:
            for outbox in outboxes:
                await outbox.flushed()
        except Exception as exc:  # noqa: BLE001 - no marker: the next start restores in full
            log.warning("table files not kept at stop: the outbox was not flushed: %r", exc)
            return
        freeze = GUARDS.freeze
        if freeze.frozen_for() > freeze.limit_s:
            log.warning("table files not kept at stop: the event loop was frozen for %.1f s", freeze.frozen_for())
            return
        generation = int(getattr(app, "consumer_generation_id", 0) or 0)

        def decide() -> tuple[dict[str, dict[int, int]], dict[str, str]]:
            ids = topic_ids(bootstrap, [topic for _, _, topic in stores])
            kept: dict[str, dict[int, int]] = {}
            for name, store, topic in stores:
                if not isinstance(store, Store) or store.stopped_offsets is None:
                    continue
                late = {p for p, _ in store.late_keys()}  # still to be repaired: read in full next time
                parts = sorted(p for p in store.stopped_offsets if p not in late)
                last = last_records(bootstrap, topic, parts) if parts else {}
                offsets = {p: marker_offset(store.stopped_offsets[p], last.get(p), generation) for p in parts}
                kept[name] = {p: o for p, o in offsets.items() if o is not None}
                left = sorted(set(store.stopped_offsets) - set(kept[name]))
                if left:
                    log.info("table %s: partition(s) %s not kept (written by another owner since, or a late "
                             "write still to repair): restored in full next time", name, left)
            return kept, {name: ids[topic] for name, _, topic in stores}

        t0 = time.monotonic()
        try:
            kept, ids = await asyncio.get_running_loop().run_in_executor(None, decide)
        except Exception as exc:  # noqa: BLE001 - no marker: the next start restores in full
            log.warning("table files not kept at stop: %r", exc)
            return
        if not any(kept.values()):
            return
        used = [name for name, store, _ in stores if isinstance(store, Store) and store.used_after_stop]
        if used:  # checked again here, with no await before the write (a later use removes the marker)
            log.warning("table files not kept at stop: table(s) %s used after their stores stopped", used)
            return
        write_marker(tabledir, CleanStop(app_id=app.conf.id, partitions=app.conf.topic_partitions,
                                         stopped_at=time.time(), generation=generation, tables=kept,
                                         topic_ids=ids))
        log.info("table files kept for the next start on this state dir: %d partition database(s) of %d "
                 "table(s), marker written in %.2f s", sum(len(v) for v in kept.values()), len(kept),
                 time.monotonic() - t0)

    app.on_before_shutdown.connect(checkpoint, weak=False)
