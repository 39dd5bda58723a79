"""Table storage on local RocksDB (``PEAKROUTE_TABLE_STORE=rocksdb``): per-order state off the heap.

Why: with faust's ``memory://`` store every order ever seen stays in the worker's heap (the order
state, its dedup version, its reservations), so RSS grows with the day's orders — about 3 KB per
order even with packed values (benchmarks/RESULTS.md).  RocksDB keeps them on disk behind bounded
memtables and a bounded block cache.

Deliberate departures from faust's own RocksDB store:

* **Reads find a key on whichever assigned partition holds it.**  faust looks a key up only in the
  partition of the *current event*.  Our batch agents read keys of a whole batch — many
  partitions — while the current event is whichever one faust delivered last; faust's rule would
  answer "no such order" for an order that exists, and the order would be processed twice.  The
  event's partition is tried first; the others are asked only on a miss, through their bloom
  filters (a few µs).  A key lives on one partition only (its partition follows from its key), so
  the first hit is the only one.
* **A worker start begins from an empty store and restores from the changelog** (in bulk, by a
  librdkafka consumer, before faust's recovery: tables/restore.py) **unless the previous worker
  process on the same state dir stopped cleanly** (tables/clean_stop.py: its files are kept, and
  only the changelog records after its stop are read).  Our changelog records are produced by the
  outbox (streams/outbox.py), and a table write can reach the local RocksDB before its changelog
  record is acknowledged: after a kill -9 the local files could be *ahead* of Kafka, and a re-read
  batch would then skip a change (a reservation, say) that the changelog never got — a later
  owner of the partition would not know it.  The changelog is the one source of truth; the local
  files are a cache of it, kept past their process only through a clean stop, which flushes and
  closes every database after the last batch and checks the changelog before it says so.  Each
  worker process has its own directory (RocksDB locks its files; several workers may share a
  state dir), and the next worker start removes the directories of processes that are gone (or
  adopts one a clean stop left).  There is no write-ahead log: a clean stop flushes the
  memtables itself, and after a crash the files are not used.
* **A database file is trusted for at most half the changelogs' ``delete.retention.ms``** after it
  was last consistent (closed at a clean stop, or revoked in a rebalance): older, a key deleted
  by another owner meanwhile could come back, its tombstone gone from the changelog.  Such a file
  is deleted when the partition is opened again, and the partition restored in full.
* **One memory budget** for all of a worker's databases (:func:`memory_budget`), not faust's
  per-database caches and memtables.
* **``len(table)`` is RocksDB's estimate**, not a scan of every key (:meth:`Store._size`).
* **The agents' batch reads and writes take a short path** (:func:`table_get`, :meth:`Store.write`,
  :meth:`Store.delete`, used by ``agents.common.BatchWrites``): one lookup per read, the key
  encoded once per write, the changelog record handed straight to the outbox — the same bytes
  faust would write (unit-tested), without its per-key machinery, which was a quarter of a
  worker's event loop.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from functools import cached_property
from pathlib import Path
from typing import Any

import orjson
from faust.stores import rocksdb as faust_rocksdb
from faust.streams import current_event

from ..metrics import registry as m
from ..streams.topics import DELETE_RETENTION_MS
from .clean_stop import MARKER
from .stale import LateRecords, generation_of

log = logging.getLogger(__name__)

STORE_URL = "peakroute-rocksdb://"

#: Per partition database (4 tables x N partitions of them).  Their memory is bounded together,
#: by :func:`memory_budget`, not per database.
ROCKSDB_OPTIONS: dict[str, Any] = {
    "write_buffer_size": 4 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "target_file_size_base": 16 * 1024 * 1024,
    "max_open_files": 256,
    "driver": "rocksdict",
}

_budget: dict[str, Any] = {}


def memory_budget(mb: int) -> tuple[Any, Any]:
    """One block cache for every table database of the process, with the memtables charged to it.

    Why: faust gives each database its own cache (2 GiB by default) and its own memtables; with
    4 tables x 6 partitions (more with standbys) a worker's RocksDB memory would be 24 times
    anything set per database.  One LRU cache of ``mb`` plus a write-buffer manager that counts
    memtables against it caps memtables + cached blocks + index/filter blocks under one number."""
    if _budget.get("mb") != mb:
        import rocksdict

        cache = rocksdict.Cache(mb * 1024 * 1024)
        manager = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(mb * 1024 * 1024 // 2, False, cache)
        _budget.update(mb=mb, cache=cache, manager=manager)
    return _budget["cache"], _budget["manager"]


class BoundedOptions(faust_rocksdb.RocksDBOptions):
    """faust's options for one database, sharing the process's cache and write-buffer budget."""

    budget_mb = 64

    def as_options(self) -> Any:
        import rocksdict

        cache, manager = memory_budget(self.budget_mb)
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_max_open_files(self.max_open_files)
        options.set_write_buffer_size(self.write_buffer_size)
        options.set_max_write_buffer_number(self.max_write_buffer_number)
        options.set_target_file_size_base(self.target_file_size_base)
        options.set_write_buffer_manager(manager)
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, True)
        table.set_block_cache(cache)
        table.set_cache_index_and_filter_blocks(True)  # counted in the budget, not beside it
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        return options


class Store(faust_rocksdb.Store):
    """faust's RocksDB store, reading a key from whichever assigned partition holds it, with every
    database of the process under one memory budget (:func:`memory_budget`), recovering without
    a frozen former owner's late records (:class:`~peakroute.tables.stale.LateRecords`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: partition -> wall-clock time its database was last consistent with the changelog and
        #: closed (revoked); the adopted files of a clean stop count from the stop.
        self._consistent_at: dict[int, float] = {}
        self._late = LateRecords()
        #: (partition, key) of late records recovery left out, until the owner writes them again.
        self._late_keys: list[tuple[int, bytes]] = []
        o = self.rocksdb_options
        self.rocksdb_options = BoundedOptions(
            max_open_files=o.max_open_files, write_buffer_size=o.write_buffer_size,
            max_write_buffer_number=o.max_write_buffer_number, target_file_size_base=o.target_file_size_base,
            bloom_filter_size=o.bloom_filter_size, use_rocksdict=True)

    def apply_changelog_batch(self, batch: Any, to_key: Any, to_value: Any) -> None:
        """faust's recovery of a batch of changelog records, without the late ones (tables/stale.py).
        The persisted offsets still move past them: they are not read again."""
        events = list(batch)
        late = self._late
        kept, dropped = [], []
        for e in events:
            msg = e.message
            (kept if late.keep(msg.tp, msg.timestamp, generation_of(msg.headers)) else dropped).append(e)
        super().apply_changelog_batch(kept, to_key, to_value)
        if dropped:
            self._late_keys += [(e.message.partition, e.message.key) for e in dropped]
            last: dict[Any, int] = {}
            for e in events:
                last[e.message.tp] = max(e.message.offset, last.get(e.message.tp, -1))
            for tp, offset in last.items():
                self.set_persisted_offset(tp, offset)
            name = getattr(self.table, "name", "?")
            m.CHANGELOG_LATE_RECORDS.labels(name).inc(len(dropped))
            first = dropped[0].message
            log.warning("table %s: %d changelog record(s) left out of recovery: written by an owner the "
                        "partition had already moved from (a frozen worker's late writes), e.g. %s[%s]@%d key %r",
                        name, len(dropped), first.topic, first.partition, first.offset,
                        first.key[:80] if first.key else first.key)

    #: Set by :meth:`stop`: partition -> the offset its last restore ended at (tables/clean_stop.py).
    stopped_offsets: dict[int, int | None] | None = None
    #: The store was used after :meth:`stop`: its files may not match the marker, so they are not kept.
    used_after_stop = False

    #: Bulk restore (tables/restore.py): the Kafka bootstrap to read the changelogs from, or None
    #: for faust's recovery alone (``PEAKROUTE_TABLE_RESTORE=faust``); set by streams/app.py.
    restore_bootstrap: str | None = None
    #: How long one table's bulk restore may hold up a rebalance before faust's recovery goes on.
    restore_max_s: float = 60.0

    async def on_rebalance(self, assigned: Any, revoked: Any, newly_assigned: Any, generation_id: int = 0) -> None:
        """faust's rebalance (close the revoked partitions' databases, open the new ones), then the
        changelogs of every assigned partition read into them in bulk (tables/restore.py) before
        faust's recovery looks at their persisted offsets.

        Every assigned partition, not only the new ones: faust's recovery reads each assigned
        partition from its persisted offset, and since our table writes go through the outbox
        (streams/outbox.carry_changelogs) that offset does not move with them — a partition kept
        through a rebalance is read again from its last restore, this worker's own writes since
        included.  Read in bulk, that costs a fraction."""
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        if self.restore_bootstrap and generation_id == getattr(self.app, "consumer_generation_id", generation_id):
            await self._bulk_restore(assigned)  # (a newer rebalance follows otherwise: faust skips too)

    async def _bulk_restore(self, assigned: Any) -> None:
        import asyncio
        import functools

        import rocksdict

        from . import restore

        topics = self.table.changelog_topic.topics
        standbys = self.app.assignor.assigned_standbys()
        mine = sorted(tp for tp in assigned if tp.topic in topics and tp not in standbys and tp.partition in self._dbs)
        if not mine:
            return
        name = getattr(self.table, "name", "?")
        log.info("table restore: reading %d changelog partition(s) of table %s", len(mine), name)
        try:
            summary = await asyncio.get_running_loop().run_in_executor(None, functools.partial(
                restore.restore_partitions, bootstrap=self.restore_bootstrap, topic=mine[0].topic,
                persisted={tp.partition: self.persisted_offset(tp) for tp in mine},
                tps={tp.partition: tp for tp in mine}, dbs=dict(self._dbs), offset_key=self.offset_key,
                late=self._late, max_s=self.restore_max_s,
                new_batch=functools.partial(rocksdict.WriteBatch, raw_mode=True)))
        except Exception as exc:  # noqa: BLE001 - faust's recovery reads from the persisted offsets
            log.warning("table restore: table %s: %r; faust's recovery reads the changelogs", name, exc)
            return
        m.TABLE_RESTORE_RECORDS.labels(name).inc(summary.records)
        m.TABLE_RESTORE_SECONDS.labels(name).inc(summary.seconds)
        if summary.dropped:
            self._late_keys += summary.late_keys
            m.CHANGELOG_LATE_RECORDS.labels(name).inc(summary.dropped)
            log.warning("table %s: %d changelog record(s) left out of recovery (bulk restore): written by an "
                        "owner the partition had already moved from (a frozen worker's late writes)",
                        name, summary.dropped)
        log.info("table restore: table %s: %d record(s) from %d partition(s) in %.2f s (%.0f records/s)%s",
                 name, summary.records, summary.partitions, summary.seconds,
                 summary.records / max(summary.seconds, 1e-6), "" if summary.complete else
                 "; cut short, faust's recovery reads the rest")

    def _encode_key(self, key: Any) -> bytes:
        """A str key as faust's ``json`` key serializer writes it (faust's json is orjson), without
        the serializer registry's dispatch — keys are encoded on every table read and write."""
        if type(key) is str and self._plain_json_keys:
            return orjson.dumps(key)
        return super()._encode_key(key)

    @cached_property
    def _plain_json_keys(self) -> bool:
        return self.key_serializer == "json" and self.key_type is None

    def _open_for_partition(self, partition: int) -> Any:
        """A partition's database, caught up from where its files were last consistent if they
        are still trusted (module docstring; adopted files get the clean stop's offset as their
        persisted offset), else deleted first and restored in full.

        Without a write-ahead log: files are kept past their process only through a clean stop,
        which flushes them (:meth:`stop`), so the log would only cost a write per put (measured:
        10 → 5 µs)."""
        import rocksdict

        from .clean_stop import ADOPTED, trusted

        path = self.partition_path(partition)
        adopted = ADOPTED.get(self.table_name, {}).get(partition)
        if adopted and not path.exists():  # never an adopted offset on a database that starts empty
            adopted = None
        consistent_at = adopted[1] if adopted else self._consistent_at.get(partition)
        if path.exists() and not trusted(consistent_at, time.time(), self.trust_s):
            shutil.rmtree(path, ignore_errors=True)
            adopted = None
            log.info("table %s partition %d: local files too old to catch up from (or of unknown origin): "
                     "removed, restored in full", self.table_name, partition)
        db = super()._open_for_partition(partition)
        no_wal = rocksdict.WriteOptions()
        no_wal.disable_wal = True
        db.set_write_options(no_wal)
        if adopted:
            ADOPTED[self.table_name].pop(partition, None)
            db.put(self.offset_key, str(adopted[0]).encode())
        return db

    #: How long (s) a closed database may be caught up from its persisted offset (module docstring).
    trust_s: float = DELETE_RETENTION_MS / 1000 / 2

    def _db_for_partition(self, partition: int) -> Any:
        """faust's (it opens the database if needed); after :meth:`stop` — a rebalance racing the
        stop, say, whose recovery reads or writes the databases again — the files no longer match
        what the clean-stop marker would say: no marker, and one already written is removed."""
        if self.stopped_offsets is not None:
            self._used_after_stop()
        return super()._db_for_partition(partition)

    def _del(self, key: bytes) -> None:
        """faust's delete (on the databases open now: after :meth:`stop`, none — while its tombstone
        may still reach the changelog), noting a use after the stop."""
        if self.stopped_offsets is not None:
            self._used_after_stop()
        super()._del(key)

    def _used_after_stop(self) -> None:
        if not self.used_after_stop:
            self.used_after_stop = True
            (Path(self.path) / MARKER).unlink(missing_ok=True)
            log.info("table %s: used after its store stopped (a rebalance during the stop?): its files are "
                     "not kept", self.table_name)

    def revoke_partitions(self, table: Any, tps: Any) -> None:
        """faust's revocation (the databases are dropped, their files left for a later assignment),
        remembering when each file was last consistent (:meth:`_open_for_partition`)."""
        now = time.time()
        for tp in tps:
            if tp.topic in table.changelog_topic.topics and tp.partition in self._dbs:
                self._consistent_at[tp.partition] = now
        super().revoke_partitions(table, tps)

    async def stop(self) -> None:
        """faust's stop, after flushing and closing every database (their memtables would be lost
        otherwise: no write-ahead log) and noting where each partition's last restore ended, for
        the clean-stop marker (tables/clean_stop.py)."""
        stopped: dict[int, int | None] = {}
        for partition, db in list(self._dbs.items()):
            try:
                raw = db.get(self.offset_key)
                stopped[partition] = None if raw is None else int(raw)
                db.flush()
                db.close()
            except Exception as exc:  # noqa: BLE001 - files not kept: the next start restores in full
                self.used_after_stop = True
                log.warning("table %s partition %d: not closed cleanly: %r", self.table_name, partition, exc)
        self._dbs.clear()
        self.stopped_offsets = stopped
        await super().stop()

    def _lookup(self, key: bytes, first: int | None = None, exact: bool = False) -> bytes | None:
        """The value of ``key`` from the partition that holds it: ``first`` (the caller's hint),
        else the current event's, then the others through their bloom filters.

        ``exact``: ``first`` is the key's owner for certain (an agent reading its own partition's
        state, which it alone writes there), so a miss there is an answer: the other partitions
        are not probed.  A miss — every new order — probed five bloom filters; at 400 orders/s
        that was ~7% of the worker's main thread (py-spy, 2026-12-04)."""
        if first is None:
            event = current_event()
            first = event.message.partition if event is not None else self._key_index.get(key)
        dbs = self._dbs
        if first is not None and first in dbs:
            value = dbs[first].get(key)
            if value is not None or exact:
                return value
        for partition, db in list(dbs.items()):
            if partition == first or not db.key_may_exist(key):
                continue
            value = db.get(key)
            if value is not None:
                self._key_index[key] = partition
                return value
        return None

    def _get(self, key: bytes) -> bytes | None:
        return self._lookup(key)

    def get_value(self, key: Any, default: Any = None, partition: int | None = None, exact: bool = False) -> Any:
        """``table.get(key, default)`` in one lookup; ``partition`` is where the key should be
        (``exact``: where it is if anywhere, see :meth:`_lookup`).

        faust's ``Table.get`` asks the store ``key in`` and then ``[key]``: two lookups and two key
        encodings per read, and on a miss (every new order) a probe of every partition twice.
        Table reads were ~13% of the event loop in a soak profile."""
        raw = self._lookup(self._encode_key(key), partition, exact)
        return default if raw is None else self._decode_value(raw)

    def write(self, key: Any, value: Any, partition: int) -> bool:
        """``table[key] = value`` on ``partition`` (a batch's flush: agents/common.BatchWrites).

        The same changelog record and the same stored bytes as faust's ``table[key] = value``
        under an event of ``partition``, without its per-write machinery: the key encoded once (faust
        encodes it for the changelog and again for the store), no current-event lookups, no
        future per record.  Writes were ~16% of the event loop in a drain profile.  Returns False
        (nothing written) when the table's changelog is not carried by the outbox."""
        send = getattr(self.table, "send_changelog_bytes", None)
        if send is None:
            return False
        kb, vb = self._encode_key(key), self._encode_value(value)
        send(partition, kb, vb)  # the changelog first, as faust does
        self._db_for_partition(partition).put(kb, vb)
        return True

    def delete(self, key: Any, partition: int) -> bool:
        """``del table[key]`` (a tombstone on ``partition``'s changelog) if the key exists; see :meth:`write`."""
        send = getattr(self.table, "send_changelog_bytes", None)
        if send is None:
            return False
        kb = self._encode_key(key)
        if self._lookup(kb, partition) is not None:
            send(partition, kb, None)
            self._del(kb)
        return True

    def late_keys(self) -> list[tuple[int, bytes]]:
        """(partition, encoded key) of the late records recovery left out since the last call."""
        keys, self._late_keys = self._late_keys, []
        return keys

    def repair(self, key: bytes, partition: int) -> None:
        """Write ``key`` (encoded) to ``partition``'s changelog again with the value this store holds
        for it, or a tombstone if none: the record compaction must keep after a late write
        (tables/repair.py).  The stored bytes are the changelog's bytes (:meth:`write`)."""
        self.table.send_changelog_bytes(partition, key, self._db_for_partition(partition).get(key))

    def _size(self) -> int:
        """RocksDB's own estimate of the keys of the active partitions.

        faust counts by iterating every key — a full scan of the day's orders, and the table-size
        gauge asks every 5 s: at 300k orders that stalled the event loop long enough to show in
        p99.  An estimate: a key overwritten or deleted may count twice until compaction merges it
        (the gauge's trend is what the dashboard needs)."""
        return sum(db.property_int_value("rocksdb.estimate-num-keys") or 0 for db in self._dbs_for_actives())

    def _contains(self, key: bytes) -> bool:
        return self._lookup(key) is not None


def table_get(table: Any, key: Any, default: Any = None, partition: int | None = None, exact: bool = False) -> Any:
    """``table.get(key, default)`` for a faust table; one lookup when the table is on our RocksDB
    store (see :meth:`Store.get_value`), faust's own path otherwise (``memory://``)."""
    store = getattr(table, "data", None)
    if isinstance(store, Store):
        return store.get_value(key, default, partition, exact)
    return table.get(key, default)


def register() -> None:
    """Make ``peakroute-rocksdb://`` a faust store URL."""
    from faust.stores import STORES

    STORES.data.setdefault(STORE_URL.split(":", 1)[0], f"{__name__}:Store")


def worker_tabledir(root: Path, app_id: str, partitions: int, bootstrap: str, keep: bool = True,
                    pid: int | None = None) -> Path:
    """This process's own table directory under ``root``: the files a cleanly stopped worker left
    (``keep``; tables/clean_stop.py) or a new, empty one; removes those of other dead processes."""
    from ..stack import pid_alive
    from ..streams.topics import changelog_topic
    from .clean_stop import adopt, topic_ids

    def ids(tables: list[str]) -> dict[str, str]:
        by_topic = topic_ids(bootstrap, [changelog_topic(app_id, t) for t in tables])
        return {t: by_topic[changelog_topic(app_id, t)] for t in tables}

    pid = os.getpid() if pid is None else pid
    mine, _ = adopt(root, pid, app_id, partitions, Store.trust_s, pid_alive, ids, keep=keep)
    return mine
