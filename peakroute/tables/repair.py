"""Late changelog writes repaired by the partition's owner: the key written again with its value.

Why: recovery leaves out a replaced owner's late writes (tables/stale.py) by comparing each record
with the records ahead of it on the partition.  Kafka's log compaction keeps only the newest record
of a key: once the log cleaner has passed over a late write, the new owner's own earlier record of
that key is gone, and a later recovery that leaves the late write out finds the key *absent* — a
hold forgotten (its units sold again), an order forgotten (its re-sent payload routed again).  The
changelog topics are compacted, so this is a matter of when, not whether: the cleaner runs on every
closed segment.  And a late write that lands before the new owner wrote anything to the partition
is not recognised by recovery at all.

So the owner puts a correct record after every late one, both kinds:

* records its recovery left out (collected by the store: :meth:`Store.late_keys`), and
* records with an older writer generation that arrive on a partition it owns after its recovery
  ended — it follows its own changelog partitions with a plain librdkafka consumer (a few µs of
  Python per record, on the event loop in a timer: ~4 records per order).

The repair is the owner's current value of the key as its store holds it (the same bytes the
changelog carries), or a tombstone where it has none, sent through the table's own outbox and
stamped with the owner's generation — so it lands after the late record and, being the newest,
is what compaction keeps.  It is harmless when it was not needed: the same value once more.
What it cannot repair: a late write the owner's recovery *took* (one that landed before any of
the new owner's records, read before the owner's recovery ended — see tables/stale.py).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

from .stale import GENERATION_HEADER, generation_of

log = logging.getLogger("peakroute.repair")

#: Records taken from the follower per timer tick at most (the rest wait for the next tick).
POLL_MAX = 20_000


def late_keys(messages: Iterable[Any], generation: int) -> list[tuple[str, int, bytes]]:
    """(topic, partition, key) of each record of ``messages`` (librdkafka messages of changelog
    partitions this worker owns, read from where its recovery ended) written by an owner of an
    older generation than this worker's ``generation``.  Records without the generation header
    (older builds) and errors (end-of-partition events) are skipped."""
    mine = [(GENERATION_HEADER, str(generation).encode())]
    found = []
    for msg in messages:
        if msg.error() is not None:
            continue
        headers = msg.headers()
        if headers == mine:  # nearly every record: this worker's own writes
            continue
        gen = generation_of(headers)
        if gen is not None and gen < generation:
            found.append((msg.topic(), msg.partition(), msg.key()))
    return found


class ChangelogFollower:
    """A consumer (no group, assigned by hand) of the changelog partitions this worker owns, from
    where their recovery ended; re-assigned after every rebalance."""

    def __init__(self, bootstrap: str, consumer_factory: Any = None) -> None:
        self.bootstrap = bootstrap
        self.generation: int | None = None
        self._make = consumer_factory
        self._consumer: Any = None

    def follow(self, positions: dict[tuple[str, int], int], generation: int) -> None:
        """Read ``positions`` ((topic, partition) → first offset to read) from now on."""
        from confluent_kafka import Consumer, TopicPartition

        if self._consumer is None:
            self._consumer = (self._make or Consumer)({
                "bootstrap.servers": self.bootstrap,
                "group.id": f"peakroute-repair-{uuid.uuid4().hex[:12]}",  # never joins or commits
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                # Small prefetch: the records are looked at for their header only.
                "queued.max.messages.kbytes": 4 * 1024,
                "fetch.wait.max.ms": 200,
                "client.id": "peakroute-worker-repair",
            })
        self._consumer.assign([TopicPartition(t, p, off) for (t, p), off in sorted(positions.items())])
        self.generation = generation

    def poll(self) -> list[Any]:
        """What has arrived since the last poll (never waits)."""
        if self._consumer is None:
            return []
        out: list[Any] = []
        while len(out) < POLL_MAX:
            got = self._consumer.consume(min(5_000, POLL_MAX - len(out)), 0)
            if not got:
                break
            out += got
        return out

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def install(app: Any, tables: list[Any], bootstrap: str, every_s: float = 1.0) -> None:
    """Follow this worker's changelog partitions and repair every late write (module docstring).
    Tables on our RocksDB store only (``table_store=rocksdb``): the repair reads the stored bytes."""
    from faust.types import TP

    from ..agents.common import GUARDS, tables_settled
    from ..metrics import registry as m
    from .store import STORE_URL, Store

    if getattr(app.conf, "store", None) is None or not str(app.conf.store).startswith(STORE_URL.split(":")[0]):
        return  # memory:// tables: nothing stored as the changelog's bytes to write again
    follower = ChangelogFollower(bootstrap)
    stores: dict[str, Store] = {}

    async def close_follower(*_args: object, **_kwargs: object) -> None:
        follower.close()

    app.on_before_shutdown.connect(close_follower, weak=False)

    def owned() -> dict[tuple[str, int], Any]:
        if not stores:  # faust creates a table's store on first use
            stores.update({t.changelog_topic.get_topic_name(): t.data for t in tables if isinstance(t.data, Store)})
        standbys = {(tp.topic, tp.partition) for tp in app.assignor.assigned_standbys()}
        return {(topic, p): store for topic, store in stores.items() for p in list(store._dbs)  # noqa: SLF001
                if (topic, p) not in standbys}

    @app.timer(interval=every_s, on_leader=False)
    async def repair_late_changelog_writes() -> None:
        if not tables_settled(app):
            return
        generation = int(getattr(app, "consumer_generation_id", 0) or 0)
        parts = owned()
        if not stores:
            return
        if generation != follower.generation:
            # After a rebalance: from where each partition's recovery ended (the store's persisted
            # offset: the last record recovery applied or left out).
            positions = {}
            for (topic, p), store in parts.items():
                last = store.persisted_offset(TP(topic, p))
                positions[(topic, p)] = 0 if last is None else last + 1
            try:
                follower.follow(positions, generation)
            except Exception as exc:  # noqa: BLE001 - tried again next tick (the generation is unchanged)
                log.warning("changelog follower not assigned: %r", exc)
        wanted: set[tuple[str, int, bytes]] = set()
        for topic, store in stores.items():
            wanted.update((topic, p, key) for p, key in store.late_keys())
        try:
            wanted.update(late_keys(follower.poll(), generation))
        except Exception as exc:  # noqa: BLE001 - the follower is a safety net; the worker goes on
            log.warning("changelog follower: %r", exc)
        if not wanted:
            return
        GUARDS.freeze.check("changelog repair")  # a frozen worker may no longer own these partitions
        repaired = 0
        for topic, p, key in sorted(wanted):
            store = parts.get((topic, p))
            if store is None:  # moved away meanwhile: its new owner recovers without the late write
                continue
            store.repair(key, p)
            repaired += 1
            m.CHANGELOG_REPAIRS.labels(getattr(store.table, "name", topic)).inc()
        if repaired:
            topic, p, key = min(wanted)
            log.warning("changelog: %d key(s) written again after a replaced owner's late write(s), so that "
                        "compaction keeps this owner's value (e.g. %s[%d] key %r)", repaired, topic, p, key[:80])
