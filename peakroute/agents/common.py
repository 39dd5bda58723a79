"""Plumbing shared by the agents: dead-lettering, partition choice, batching sends per partition."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import traceback
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import faust
from aiokafka.partitioner import murmur2
from faust.types import TP

from ..domain.deadletter import Source, dead_letter
from ..domain.inventory import sku_partition  # noqa: F401 - re-exported: the agents' one import place
from ..metrics import registry as m
from ..streams.codecs import dumps
from ..tables.packed import PackedTable
from ..tables.store import Store as RocksStore
from ..tables.store import table_get

log = logging.getLogger("peakroute.agents")


def order_partition(channel_order_id: str, partitions: int) -> int:
    """The raw partition that owns an order: where a producer with Kafka's default partitioner
    (murmur2, the Java client's; ours are configured alike) puts a payload keyed by its channel
    order id.  The order's routing state lives there, so a payload found on another partition
    (no key, another key, another partitioner) is forwarded there before it is looked at."""
    return (murmur2(channel_order_id.encode()) & 0x7FFFFFFF) % partitions


#: Largest payload copied whole into a dead letter.  A DLQ record holds the payload twice (text
#: and base64), so a bigger one could not be written to Kafka at all (1 MB limit) and dead-lettering
#: it would fail every time; its first bytes, length and SHA-256 are kept instead, and the original
#: stays at its source offset.
MAX_DLQ_PAYLOAD = 256 * 1024


def dead_letter_record(event_or_msg: Any, *, channel: str | None, stage: str, reason: str, field: str | None,
                       detail: str) -> dict:
    """The DLQ record for one message (payloads over :data:`MAX_DLQ_PAYLOAD` are cut, see there)."""
    msg = getattr(event_or_msg, "message", event_or_msg)
    payload = msg.value
    cut = payload is not None and len(payload) > MAX_DLQ_PAYLOAD
    record = dead_letter(
        reason=reason, field=field, detail=detail, channel=channel, stage=stage,
        source=Source(msg.topic, msg.partition, msg.offset, msg.timestamp and int(msg.timestamp * 1000)),
        key=msg.key[:1024] if msg.key is not None else None, payload=payload[:MAX_DLQ_PAYLOAD] if cut else payload)
    if cut:
        record.update(payload=None, payload_bytes=len(payload), payload_truncated=True,
                      payload_sha256=hashlib.sha256(payload).hexdigest())
    return record


async def send_dead_letter(dlq: faust.TopicT, event: faust.EventT, *, channel: str | None, stage: str,
                           reason: str, field: str | None, detail: str) -> None:
    record = dead_letter_record(event, channel=channel, stage=stage, reason=reason, field=field, detail=detail)
    m.DEAD_LETTERS.labels(channel or "-", stage, reason).inc()
    key = event.message.key
    await dlq.send(key=key[:1024] if key is not None else None, value=dumps(record))


def is_plumbing_failure(exc: BaseException) -> bool:
    """A failure of the machinery (tables, Kafka, network), not of the message being handled."""
    import asyncio

    from faust.exceptions import FaustError

    return isinstance(exc, (FaustError, ConnectionError, asyncio.TimeoutError, OSError))


async def dead_letter_exception(dlq: faust.TopicT, event: faust.EventT, exc: BaseException, *,
                                channel: str | None, stage: str) -> None:
    """Turn an unexpected failure into a dead letter: nothing may escape a faust agent.

    A plumbing failure is no fault of the message: the worker exits instead (see :func:`die`) and
    the message is read again after the restart — but only :data:`MAX_PLUMBING_RETRIES` times: a
    message that fails the same way on every attempt is a poison pill, and is dead-lettered then
    (no crash loop).  The count is kept per (group, topic, partition, offset) in Redis (a file
    under the state dir when Redis is away), so it survives the restarts it counts.
    """
    msg = event.message
    if is_plumbing_failure(exc):
        failures = GUARDS.retries.failed(msg.topic, msg.partition, msg.offset)
        if not exhausted(failures, MAX_PLUMBING_RETRIES):
            die(stage, exc)
        log.error("%s: %s[%s]@%s failed %d times (%r): dead-lettered as a poison pill", stage, msg.topic,
                  msg.partition, msg.offset, failures, exc)
        detail = f"failed {failures} times, last: {type(exc).__name__}: {exc}"[:500]
    else:
        log.exception("%s failed on %s[%s]@%s", stage, msg.topic, msg.partition, msg.offset)
        detail = f"{type(exc).__name__}: {exc}"[:500] + " | " + traceback.format_exc(limit=3)[-500:]
    await send_dead_letter(dlq, event, channel=channel, stage=stage, reason="internal_error", field=None,
                           detail=detail)


def by_partition(items: Iterable[tuple[int, Any]]) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = defaultdict(list)
    for p, item in items:
        out[p].append(item)
    return out


def tables_settled(app: Any) -> bool:
    """True once this worker's tables hold everything of its current assignment: no rebalance
    under way and faust's recovery of the active table partitions finished.

    Why: a batch taken before a rebalance can still be processed while the tables recover the
    newly assigned partitions (faust pauses fetching, not a batch already taken).  A check that
    reads whole tables — the stock owner re-deriving ``reserved`` from its holds — must not run on
    a half-recovered table: in a SIGSTOP zombie run it lowered ``reserved`` below the promised
    units and they were sold again (tests/evidence/2026-11-27-zombie-oversell)."""
    return not getattr(app, "rebalancing", False) and bool(getattr(app.tables, "actives_ready", False))


def owned_events(app: Any, events: Sequence[faust.EventT], stage: str) -> list[faust.EventT]:
    """The events of a batch this worker may act on now: their partition is assigned to it and its
    tables are settled (:func:`tables_settled`).  The rest are set aside unprocessed (counted,
    logged) and read again later.

    Why: faust can hand an agent a message fetched before a rebalance while the rebalance is under
    way — it reaches the agent when faust resumes the flow to recover tables.  Its partition may
    belong to another worker now (acting on it would write into the changelog the new owner
    writes, and answer for stock this worker no longer owns), or its table partition may be only
    half recovered (stock levels without their holds).  Every rebalance ends with a seek to the
    committed offsets, so the message is read again by whoever owns it, after recovery; and the
    consumer fix is told the message was not delivered, so a message fetched after that seek (in
    the instant before faust marks the tables recovered) is fetched again too.

    A message set aside is marked done without telling the consumer: faust must never count its
    offset as processed (faust forgets a revoked partition's acks at the revocation, and an ack
    recorded after that could let it commit past unprocessed messages once the partition returns).
    """
    settled = tables_settled(app)
    if settled:
        try:
            actives = app.assignor.assigned_actives()
        except Exception:  # noqa: BLE001 - no assignment yet (tests, a worker starting): nothing to judge
            return list(events)
    mine: list[faust.EventT] = []
    aside: list[faust.EventT] = []
    for e in events:
        (mine if settled and TP(e.message.topic, e.message.partition) in actives else aside).append(e)
    if aside:
        _set_aside(app, aside, {})
        log.warning("%s: %d message(s) set aside, to be read again (%s): %s", stage, len(aside),
                    "partition not assigned here" if settled else "rebalance under way",
                    sorted({(e.message.topic, e.message.partition) for e in aside})[:5])
        m.STALE_EVENTS.labels(stage).inc(len(aside))
    if not mine:
        return mine
    # In offset order, none left out (InputOrder): a record past a missing one waits for it.
    committed = getattr(getattr(app, "consumer", None), "_committed_offset", {})
    in_order: list[faust.EventT] = []
    missing: dict[Any, tuple[int, int]] = {}  # tp -> (the first offset not seen, the offset that came instead)
    gapped: list[faust.EventT] = []
    for e in mine:
        tp = TP(e.message.topic, e.message.partition)
        if tp not in missing:
            first = GUARDS.order.admit(tp, e.message.offset, committed.get(tp))
            if first is None:
                in_order.append(e)
                continue
            missing[tp] = (first, e.message.offset)
        gapped.append(e)
    if gapped:
        _set_aside(app, gapped, {tp: first for tp, (first, _) in missing.items()})
        for tp, (first, came) in missing.items():
            m.INPUT_GAPS.labels(tp.topic).inc()
            log.warning("%s: %s[%s] offset %d reached the agent before offset %d (records lost between Kafka and "
                        "the agent): set aside, the partition is read again from %d", stage, tp.topic, tp.partition,
                        came, first, first)
    if in_order and log.isEnabledFor(logging.DEBUG):
        log.debug("%s batch: %s", stage, offsets_of(in_order))
    return in_order


def _set_aside(app: Any, events: list[faust.EventT], rewind_to: dict[Any, int]) -> None:
    """Mark ``events`` done without acking them, so that they are read again (see owned_events);
    ``rewind_to``: tp -> the offset its partition must be fetched again from."""
    consumer = getattr(app, "consumer", None)
    unacked = getattr(consumer, "_unacked_messages", None)
    # The consumer fix's tracker (streams/consumer_fix.py) then fetches the partition again from
    # the first message set aside, should no seek of the rebalance cover it.
    tracker = getattr(consumer, "__dict__", {}).get("_peakroute_offsets")
    for e in events:
        e.message.acked = True  # take_events' ack is then a no-op: no offset is recorded
        if unacked is not None:
            unacked.discard(e.message)
        if tracker is not None:
            tracker.undelivered(TP(e.message.topic, e.message.partition), e.message.offset)
    if tracker is not None:
        for tp, offset in rewind_to.items():
            tracker.expect(tp, offset)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("set aside %s", offsets_of(events))


def offsets_of(events: list[Any]) -> str:
    """A batch's input offsets, compactly (``topic[p] first-last (n)``): for debug logs that must
    show which process handled which records, around rebalances and restarts."""
    spans: dict[tuple[str, int], list[int]] = {}
    for e in events:
        spans.setdefault((e.message.topic, e.message.partition), []).append(e.message.offset)
    return ", ".join(f"{t.rsplit('.', 1)[-1]}[{p}] {min(o)}-{max(o)} ({len(o)})" for (t, p), o in sorted(spans.items()))


def in_event(event: faust.EventT) -> None:
    """Make ``event`` the stream's current event while a batch is processed event by event.

    faust writes a table change to the changelog partition of the *current* event; in a
    ``take_events`` batch that would be the batch's last event, so each event is made current
    before its own table writes.  (Uses faust's context variable: there is no public setter.)
    """
    import weakref

    from faust.streams import _current_event  # type: ignore[attr-defined]

    _current_event.set(weakref.ref(event))


#: Most messages per ``take_events`` batch: big enough to amortize Redis and Kafka round trips
#: under a backlog.  How long a batch waits to fill is a setting (``PEAKROUTE_BATCH_WAIT_MS``).
BATCH_MAX = 500


#: Restarts a message may cause by failing with a plumbing error before it is dead-lettered.
MAX_PLUMBING_RETRIES = 3


def exhausted(failures: int, limit: int) -> bool:
    """True when a message has failed more often than ``limit`` retries allow (failures counts this one)."""
    return failures > limit


class RetryCounter:
    """Failures per message, surviving the worker restarts that :func:`die` causes.

    Redis (shared by every worker, so a message that moves to another worker keeps its count) when
    it answers, else a small JSON file in the state dir; without either, counts live in memory
    only (and then a crash loop is bounded only by the supervisor's restart policy).
    """

    TTL_S = 24 * 3600

    def __init__(self, group: str = "peakroute", redis_url: str | None = None, path: Path | None = None) -> None:
        self.group, self.redis_url, self.path = group, redis_url, path
        self._memory: dict[str, int] = {}

    def key(self, topic: str, partition: int, offset: int) -> str:
        return f"peakroute:{self.group}:failures:{topic}:{partition}:{offset}"

    def failed(self, topic: str, partition: int, offset: int) -> int:
        """Count one more failure of this message; return how many there have been."""
        key = self.key(topic, partition, offset)
        if self.redis_url:
            try:
                import redis

                client = redis.Redis.from_url(self.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
                with client.pipeline(transaction=True) as pipe:
                    n, _ = pipe.incr(key).expire(key, self.TTL_S).execute()
                return int(n)
            except Exception as exc:  # noqa: BLE001 - fall back to the file
                log.warning("failure count not in redis (%r); using the state dir", exc)
        if self.path is not None:
            try:
                counts = json.loads(self.path.read_text()) if self.path.exists() else {}
                counts[key] = int(counts.get(key, 0)) + 1
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_name(self.path.name + ".tmp")
                tmp.write_text(json.dumps(dict(list(counts.items())[-1000:])))
                tmp.replace(self.path)
                return int(counts[key])
            except (OSError, ValueError) as exc:
                log.warning("failure count not written to %s: %r", self.path, exc)
        self._memory[key] = self._memory.get(key, 0) + 1
        return self._memory[key]


class InputOrder:
    """Per input partition, the next offset this process may act on: records are acted on in
    offset order, with none left out, from the group's committed offset on.

    Why (tests/evidence/2026-11-28-skipped-stock-op): after a kill -9 and a takeover, the new owner
    of a stock-ops partition acted on offsets 54… while 44…53 — uncommitted, their table changes
    lost with the killed worker — were never handed to it.  It promised units on stock that lacked
    those reservations; the commit then stalled on the gap, the commit watch restarted the worker,
    and 44…53 were applied after 54…70 — refusing two lines whose confirmations had already gone
    out: 2 units oversold.  Every stage is idempotent for records it sees *again*, not for records
    it sees *out of order*.  So a record past the next expected offset is set aside and the
    partition rewound to the missing one (``streams/consumer_fix``), whatever lost it.  One way
    it happens, caught with traces: records of one fetch are split over two batches; the first
    arrives while the tables still recover and is set aside, the second a few ms later with the
    tables settled — without this guard it would be acted on before the first is read again.

    Reset at every assignment: the first record of a partition is then judged against the
    committed offset (faust seeks there when the assignment's recovery ends).  Records at or
    before the expected offset are re-reads (rewinds, re-sent batches): admitted, idempotent.
    """

    #: The same offset still missing after this many re-reads of its partition is believed gone
    #: from the topic (retention or an operator deleted it unread; the consumer fix then counted a
    #: hole too).  A re-read is seen as the offsets that come instead starting over.
    MAX_MISSES = 4

    def __init__(self) -> None:
        self._next: dict[Any, int] = {}
        #: tp -> (missing offset, re-reads that did not bring it, latest offset that came instead)
        self._misses: dict[Any, tuple[int, int, int]] = {}

    def reset(self) -> None:
        self._next.clear()
        self._misses.clear()

    def admit(self, tp: Any, offset: int, committed: int | None) -> int | None:
        """None if the record at ``offset`` may be acted on now (it then counts as acted on);
        else the offset that must come first."""
        want = self._next.get(tp, committed)
        if want is not None and offset > want:
            missed, times, came = self._misses.get(tp, (None, 0, offset))
            if missed != want:
                times = 0
            elif offset <= came:  # the partition was read again from the missing offset
                times += 1
            if times < self.MAX_MISSES:
                self._misses[tp] = (want, times, offset)
                return want
            log.error("%s[%s]: offsets %d..%d still missing after %d re-reads: acting on %d (they are gone "
                      "from the topic)", getattr(tp, "topic", tp), getattr(tp, "partition", ""), want, offset - 1,
                      times, offset)
        self._misses.pop(tp, None)
        self._next[tp] = offset + 1
        return None


class FreezeWatch:
    """Fencing for a worker that was frozen (SIGSTOP, VM pause, a stalled event loop).

    While a worker's event loop stands still it sends no heartbeats; after the session timeout
    the group gives its partitions to another worker.  When it wakes up it still believes it owns
    them and would act on stale tables (a zombie: it could promise units the new owner already
    promised, and overwrite the new owner's changelog).  So a worker whose loop was frozen for
    longer than ``limit_s`` (less than the session timeout) exits at once (code 70, see :func:`die`)
    and its supervisor restarts it; it committed nothing since, so nothing is lost.
    """

    def __init__(self, limit_s: float = float("inf")) -> None:
        self.limit_s = limit_s
        self.last_tick: float | None = None
        self._beat: Any = None  # the event loop's pending call of the next tick

    def start(self, loop: Any, interval_s: float = 1.0) -> None:
        """Tick every ``interval_s`` on the event loop itself from now on (idempotent).

        Started at the worker's first partition assignment, not by a faust timer: faust starts
        timers only once the first table recovery is complete, and a worker frozen during that
        recovery (its partitions given away meanwhile) woke up unfenced — caught by the SIGSTOP
        fault scenario on 2026-12-05.  A plain ``call_later`` chain runs from the first moment
        the worker owns anything, through rebalances and recoveries alike."""
        if self._beat is not None:
            return

        def beat() -> None:
            self.tick()
            self._beat = loop.call_later(interval_s, beat)

        self.last_tick = time.monotonic()
        self._beat = loop.call_later(interval_s, beat)

    def frozen_for(self, now: float | None = None) -> float:
        if self.last_tick is None:
            return 0.0
        return (time.monotonic() if now is None else now) - self.last_tick

    def check(self, stage: str, now: float | None = None) -> None:
        gap = self.frozen_for(now)
        if gap > self.limit_s:
            die(stage, TimeoutError(f"event loop frozen for {gap:.1f} s (> {self.limit_s:.1f} s): "
                                    "the group may have given my partitions away"))

    def tick(self, now: float | None = None) -> None:
        self.check("freeze-watch", now)
        self.last_tick = time.monotonic() if now is None else now


class Guards:
    def __init__(self) -> None:
        self.retries = RetryCounter()
        self.freeze = FreezeWatch()
        self.order = InputOrder()


GUARDS = Guards()


def freeze_limit(session_timeout_s: float) -> float:
    """How long the loop may stand still before the worker must assume it lost its partitions:
    the session timeout minus two heartbeat intervals (the last heartbeat may be that old)."""
    heartbeat = min(3.0, session_timeout_s / 3)
    return max(1.0, session_timeout_s - 2 * heartbeat)


def install_guards(app: faust.App, settings: Any) -> None:
    """The poison-pill retry counter, the freeze watch, the commit watch with its recovery watch
    (:class:`RecoveryStall`), the input order's reset at every assignment (:class:`InputOrder`)
    and the consumer's offset fix (``streams/consumer_fix.py``) of one worker process."""
    from ..streams.topics import INVENTORY, RAW_TOPICS, STOCK_OPS, STOCK_REPLIES

    inputs = {*RAW_TOPICS, INVENTORY, STOCK_OPS, STOCK_REPLIES}
    from ..streams import consumer_fix

    consumer_fix.install(inputs)
    consumer_fix.batch_fetches(settings.fetch_wait_ms)
    if settings.fetch_codec == "fast":
        from ..streams import fetch_codec

        fetch_codec.install()
    elif settings.fetch_codec != "aiokafka":
        raise ValueError(f"PEAKROUTE_FETCH_CODEC must be fast or aiokafka, not {settings.fetch_codec!r}")
    GUARDS.retries = RetryCounter(settings.app_id, settings.redis_url,
                                  Path(settings.state_dir) / "failures" / f"{settings.app_id}.json")
    GUARDS.freeze = FreezeWatch(freeze_limit(settings.session_timeout_s))

    async def new_assignment(*_args: Any, **_kwargs: Any) -> None:
        GUARDS.freeze.start(asyncio.get_running_loop())  # from the first assignment on (FreezeWatch.start)
        GUARDS.order.reset()  # judged against the committed offsets again (InputOrder)

    app.on_partitions_revoked.connect(new_assignment, weak=False)
    app.on_partitions_assigned.connect(new_assignment, weak=False)

    stall = CommitStall(max(60.0, 2 * settings.session_timeout_s))
    recovery_stall = RecoveryStall(stall.limit_s)
    paused_since: list[float] = []  # when the watch last started standing aside (rebalance, recovery)

    async def check_recovery() -> None:
        rec = app.tables.recovery
        if not rec.in_recovery:
            return
        received = rec._active_events_received_at  # noqa: SLF001 - faust keeps no public view of it
        now, started, last = time.monotonic(), rec._recovery_started_at, max(received.values(), default=None)  # noqa: SLF001
        quiet = recovery_stall.stalled_for(now, started, last)
        if quiet is None:
            if recovery_stall.repair_due(now, started, last):
                await reread_changelogs(rec, now - max(started, last or started))
            return
        try:
            diagnosis: Any = recovery_diagnosis(app)
        except Exception as exc:  # noqa: BLE001 - a diagnosis must never stop the exit
            diagnosis = repr(exc)
        log.error("recovery watch: no changelog record received for %.0f s: %s", quiet, diagnosis)
        die("recovery-watch", TimeoutError(f"table recovery received nothing for {quiet:.0f} s"))

    async def reread_changelogs(rec: Any, quiet: float) -> None:
        """Fetch again the changelog records the recovery never received (RecoveryStall)."""
        from ..streams.consumer_fix import fetch_position, kafka_client

        try:
            client = kafka_client(app.consumer)
            positions = {tp: fetch_position(client, tp) if client else None for tp in rec.active_tps}
            rewinds = changelog_rewinds(dict(rec.active_offsets), dict(rec.active_highwaters), positions)
            if not rewinds:
                return
            log.warning("recovery watch: no changelog record received for %.0f s, but the consumer fetched past "
                        "what the recovery received: reading again %s", quiet,
                        {f"{tp.topic}[{tp.partition}]": (positions[tp], offset) for tp, offset in rewinds.items()})
            for tp, offset in rewinds.items():
                await app.consumer.seek(tp, offset)
                m.RECOVERY_REREADS.inc()
        except Exception as exc:  # noqa: BLE001 - a timer's exception stops the faust app; the exit remains
            log.warning("recovery watch: could not read the changelogs again: %r", exc)

    @app.timer(interval=5.0, on_leader=False)
    async def commit_watch() -> None:
        if getattr(app, "rebalancing", False) or getattr(app, "in_recovery", False):
            stall.reset()
            await check_recovery()
            if not paused_since:
                paused_since.append(time.monotonic())
            elif time.monotonic() - paused_since[0] > stall.limit_s:
                paused_since[0] = time.monotonic()  # say it again after another limit_s
                log.warning("commit watch: rebalancing=%s in_recovery=%s for over %.0f s",
                            getattr(app, "rebalancing", None), getattr(app, "in_recovery", None), stall.limit_s)
            return
        paused_since.clear()
        try:
            consumer = app.consumer
            # Input topics only: the assignment also holds changelog partitions (table recovery
            # and standbys), which the group never commits.
            progress = {tp: (waiting_offset(consumer, tp), consumer._committed_offset.get(tp))  # noqa: SLF001
                        for tp in consumer.assignment() if tp.topic in inputs}
        except Exception:  # noqa: BLE001 - not started yet
            return
        stuck = stall.observe(progress)
        for tp in stall.newly_slow(stall.limit_s / 3):
            try:
                diagnosis: Any = offset_diagnosis(app, tp)
            except Exception as exc:  # noqa: BLE001 - a diagnosis must never crash the worker (a timer's
                diagnosis = repr(exc)  # exception stops the faust app)
            log.warning("commit watch: %s[%s] not committing for %.0f s: %s", tp.topic, tp.partition,
                        stall.limit_s / 3, diagnosis)
        if stuck:
            die("commit-watch", TimeoutError(f"committed offsets not advancing for {stall.limit_s:.0f} s while "
                                             f"messages wait: {sorted(map(str, stuck))[:5]}"))


def high_watermark(consumer: Any, tp: Any) -> int | None:
    """The partition's end offset as last seen by the Kafka client (None if never fetched)."""
    from ..streams.consumer_fix import kafka_client

    try:
        return kafka_client(consumer).highwater(tp)
    except Exception:  # noqa: BLE001 - not started, not assigned
        return None


def waiting_offset(consumer: Any, tp: Any) -> int | None:
    """How far messages wait in a partition: the furthest of faust's read offset, the Kafka
    client's fetch position (records handed out but dropped before faust read them) and the
    partition's end (records never fetched at all).  The commit watch must see a commit that stands
    still below any of them, or a stall behind such records goes unnoticed."""
    from ..streams.consumer_fix import fetch_position, kafka_client

    client = kafka_client(consumer)
    seen = (consumer._read_offset.get(tp), fetch_position(client, tp) if client else None,  # noqa: SLF001
            high_watermark(consumer, tp))
    known = [v for v in seen if v is not None]
    return max(known) if known else None


def offset_diagnosis(app: Any, tp: Any) -> dict[str, Any]:
    """What faust's consumer (and our offset fix) know about one partition: for the log line that
    precedes a commit-watch exit, so a stall can be diagnosed after the fact."""
    from ..streams.consumer_fix import fetch_position, kafka_client

    c = app.consumer
    client = kafka_client(c)
    acked = list(c._acked.get(tp, ()))  # noqa: SLF001
    tracker = c.__dict__.get("_peakroute_offsets")
    unacked = sorted(msg.offset for msg in list(c._unacked_messages) if msg.tp == tp)  # noqa: SLF001
    return {
        "read": c._read_offset.get(tp), "committed": c._committed_offset.get(tp),  # noqa: SLF001
        "position": fetch_position(client, tp) if client else None, "highwater": high_watermark(c, tp),
        "kafka_paused": tp in (client.paused() if client else ()),
        "acked_n": len(acked), "acked_head": sorted(acked)[:5],
        "gaps": sorted((iv.begin, iv.end) for iv in c._gap.get(tp, ()))[:5],  # noqa: SLF001
        "unacked_n": len(unacked), "unacked_head": unacked[:5],
        "expected": tracker.expected.get(tp) if tracker else None,
        "rewinding": tracker.rewinding.get(tp) if tracker else None,
        "active": tp in (c._active_partitions or ()), "paused": tp in c._paused_partitions,  # noqa: SLF001
        "buffered": tp in getattr(c, "_buffered_partitions", ()), "flow_active": getattr(c, "flow_active", None),
    }


class RecoveryStall:
    """A table recovery that receives nothing from the changelogs it is reading.

    Seen in CI and in a looped fault run (``tests/evidence/2026-11-28-recovery-hang``): after a
    rebalance faust's recovery waited for changelog records that never came ("No event received
    for active tp … since recovery start") and the worker's input partitions stood still for good,
    with no error.  The watch's own diagnosis of the looped run showed every recovering partition
    with the Kafka client's fetch position at the partition's end and nothing received: the
    records had been fetched and dropped before they reached the recovery.

    So after ``repair_s`` without a record the watch reads those partitions again from what the
    recovery has received (:func:`changelog_rewinds`), once per ``repair_s``; after ``limit_s``
    without a record (counted from the recovery's start or its last record) the worker exits
    (code 70) and its supervisor restarts it, which rebuilds the tables from the changelogs.
    """

    def __init__(self, limit_s: float, repair_s: float = 15.0) -> None:
        self.limit_s = limit_s
        self.repair_s = repair_s
        self._repaired_at: float | None = None

    @staticmethod
    def quiet_for(now: float, started_at: float | None, last_event_at: float | None) -> float | None:
        """Seconds without a changelog record (None: not recovering).  ``started_at``: when the
        recovery started; ``last_event_at``: when its latest changelog record arrived (None: none)."""
        if started_at is None:
            return None
        return now - (max(started_at, last_event_at) if last_event_at is not None else started_at)

    def stalled_for(self, now: float, started_at: float | None, last_event_at: float | None) -> float | None:
        """Seconds without a changelog record if that is over the limit, else None."""
        quiet = self.quiet_for(now, started_at, last_event_at)
        return quiet if quiet is not None and quiet > self.limit_s else None

    def repair_due(self, now: float, started_at: float | None, last_event_at: float | None) -> bool:
        """Quiet for over ``repair_s`` and no repair in the last ``repair_s``; counts as done."""
        quiet = self.quiet_for(now, started_at, last_event_at)
        if quiet is None or quiet <= self.repair_s:
            return False
        if self._repaired_at is not None and now - self._repaired_at <= self.repair_s:
            return False
        self._repaired_at = now
        return True


def changelog_rewinds(offsets: dict[Any, int | None], highwaters: dict[Any, int | None],
                      positions: dict[Any, int | None]) -> dict[Any, int]:
    """Recovering changelog partitions fetched past what the recovery received while records
    remain: tp -> the offset to fetch again from.  ``offsets``: the last offset the recovery
    applied (-1 or None: none); ``highwaters``: the last offset it must reach; ``positions``: the
    Kafka client's fetch position (the next offset it will fetch)."""
    out = {}
    for tp, highwater in highwaters.items():
        seen = offsets.get(tp)
        seen = -1 if seen is None else seen
        position = positions.get(tp)
        if highwater is not None and highwater > seen and position is not None and position > seen + 1:
            out[tp] = seen + 1
    return out


def recovery_diagnosis(app: Any) -> dict[str, Any]:
    """What faust's recovery, its consumer and the Kafka client know about the changelog
    partitions being recovered: logged when :class:`RecoveryStall` fires, so the stall can be
    diagnosed afterwards (which of "never fetched", "fetched but not delivered", "delivered but
    not counted" it was)."""
    from ..streams.consumer_fix import fetch_position, kafka_client

    rec = app.tables.recovery
    c = app.consumer
    client = kafka_client(c)
    paused = set(client.paused()) if client else set()
    fetcher = getattr(app, "_fetcher", None)
    parts = {}
    for tp in sorted(rec.active_tps, key=str):
        parts[f"{tp.topic}[{tp.partition}]"] = {
            "offset": rec.active_offsets.get(tp), "highwater": rec.active_highwaters.get(tp),
            "position": fetch_position(client, tp) if client else None,
            "client_highwater": high_watermark(c, tp), "kafka_paused": tp in paused,
            "active": tp in (c._active_partitions or ()),  # noqa: SLF001
            "faust_paused": tp in c._paused_partitions,  # noqa: SLF001
        }
    return {
        "remaining": rec.active_remaining_total(), "flow_active": getattr(c, "flow_active", None),
        "flow_control_active": app.flow_control.is_active(),
        "fetcher": None if fetcher is None else {"started": fetcher._started.is_set(),  # noqa: SLF001
                                                 "stopped": fetcher._stopped.is_set(),  # noqa: SLF001
                                                 "crashed": fetcher._crashed.is_set()},  # noqa: SLF001
        "buffers": {str(t): len(buf) for t, buf in rec.buffers.items()},
        "partitions": parts,
    }


class CommitStall:
    """A partition whose committed offset stays put while messages read past it wait.

    faust-streaming can leave a partition's commit stuck (a gap in its acked offsets after a
    rebalance or a broker outage: its "Possible livelock: COMMIT OFFSET NOT ADVANCING") while the
    worker otherwise looks healthy; nothing after the gap is ever committed and the lag never
    drains.  After ``limit_s`` of that the worker exits (code 70) and its supervisor restarts it:
    it re-reads from the last commit, which every stage handles idempotently.
    """

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._since: dict[Any, tuple[Any, float]] = {}
        self._first_read: dict[Any, int | None] = {}
        self._reported: set[Any] = set()
        self._now = 0.0

    def reset(self) -> None:
        self._since.clear()
        self._first_read.clear()
        self._reported.clear()

    def newly_slow(self, after_s: float) -> list[Any]:
        """Partitions stalled for more than ``after_s`` that were not reported yet (each stall once)."""
        out = [tp for tp, (_, since) in self._since.items()
               if self._now - since > after_s and tp not in self._reported]
        self._reported.update(out)
        return out

    def observe(self, progress: dict[Any, tuple[int | None, int | None]], now: float | None = None) -> list[Any]:
        """``progress``: tp -> (last read offset, committed offset); returns the stalled tps."""
        now = time.monotonic() if now is None else now
        self._now = now
        stuck = []
        for tp, (read, committed) in progress.items():
            # faust's read offset is the last offset read (just after a seek: the next one), its
            # committed offset the next one to read (None until this process commits the tp).
            first = self._first_read.setdefault(tp, read)
            if committed is None:
                waiting = read is not None and first is not None and read > first
            else:
                waiting = read is not None and read > committed
            if not waiting:
                self._since.pop(tp, None)
                continue
            seen = self._since.get(tp)
            if seen is None or seen[0] != committed:
                self._since[tp] = (committed, now)
                self._reported.discard(tp)
            elif now - seen[1] > self.limit_s:
                stuck.append(tp)
        for tp in list(self._since):
            if tp not in progress:
                del self._since[tp]
        for tp in list(self._first_read):
            if tp not in progress:
                del self._first_read[tp]
        return stuck


def die(stage: str, exc: BaseException) -> None:
    """Stop the worker process at once, without committing what it has read.

    For failures of the plumbing itself (Kafka producer, not one bad message): letting the
    exception escape would make faust ack the batch and lose it.  Exiting hard leaves the
    offsets uncommitted, so the restarted worker (compose/systemd restart the process) reads the
    batch again; every state change downstream is idempotent, so that is safe.
    """
    import os

    log.critical("%s: unrecoverable plumbing failure, exiting for a clean re-read: %r", stage, exc)
    logging.shutdown()
    os._exit(70)


_DELETED = object()


class BatchWrites:
    """Table writes of one batch, applied once per key at the end of the batch.

    Many operations of a batch touch the same key (one hot SKU's stock level, one order's state
    as its replies arrive); faust sends a changelog record for every write, so coalescing them is
    the cheapest large win.  Reads see the batch's own writes.  Each key remembers the event it was
    written under, so its one changelog record goes to that event's partition.

    A key found absent is remembered as absent until the batch's flush: a new order is looked up
    when its payload is normalized and again when it is routed, a new hold when it is planned and
    when it is written, and a miss is the dearest read (the store probes every partition's bloom
    filter).  Only misses are remembered — a value read is never shared between two readers, so a
    caller that changes what it read cannot change what the next one reads.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self._event: faust.EventT | None = None
        self._dirty: dict[Any, Any] = {}
        self._events: dict[Any, faust.EventT] = {}
        #: (partition, key) found absent there: a miss answers for the partition it was read on only
        #: (a payload read off its order's partition misses there; the order may well be home).
        self._absent: set[tuple[int | None, Any]] = set()

    @property
    def event(self) -> faust.EventT | None:
        return self._event

    @event.setter
    def event(self, event: faust.EventT | None) -> None:
        # Every batch agent names the event it is about to handle here: the last moment to notice
        # that this worker was frozen and may be a zombie (see FreezeWatch).
        GUARDS.freeze.check("event")
        self._event = event

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self._dirty:
            v = self._dirty[key]
            return default if v is _DELETED else v
        partition = self._event.message.partition if self._event is not None else None
        if (partition, key) in self._absent:
            return default
        # The key of an event's state lives on that event's partition — :meth:`flush` writes it
        # there and only there, and every agent acts on the keys its input partition owns (an
        # order's raw partition, a SKU's stock-ops partition) — so a miss there is an answer
        # (``exact``: the store probes no other partition; a payload read off its order's partition
        # is forwarded home whatever it finds here).
        exact = partition is not None
        if isinstance(self.table, PackedTable):
            v = self.table.get(key, _DELETED, partition, exact)
        else:
            v = table_get(self.table, key, _DELETED, partition, exact)
        if v is _DELETED:
            self._absent.add((partition, key))
            return default
        return v

    def __contains__(self, key: Any) -> bool:
        return self.get(key, _DELETED) is not _DELETED

    def __getitem__(self, key: Any) -> Any:
        v = self.get(key, _DELETED)
        if v is _DELETED:
            raise KeyError(key)
        return v

    def __setitem__(self, key: Any, value: Any) -> None:
        self._dirty[key] = value
        self._events[key] = self.event  # type: ignore[assignment]

    def __delitem__(self, key: Any) -> None:
        self._dirty[key] = _DELETED
        self._events[key] = self.event  # type: ignore[assignment]

    def values(self) -> list[Any]:
        merged = {k: v for k, v in self.table.items() if k not in self._dirty}
        merged.update({k: v for k, v in self._dirty.items() if v is not _DELETED})
        return list(merged.values())

    def flush(self) -> int:
        """Write every changed key once; return how many changelog records that took."""
        GUARDS.freeze.check("table write")
        packed = isinstance(self.table, PackedTable)
        store = getattr(self.table.table if packed else self.table, "data", None)
        if isinstance(store, RocksStore) and getattr(store.table, "send_changelog_bytes", None):
            # One encoding per key and no per-write faust machinery (tables/store.Store.write).
            for key, value in self._dirty.items():
                partition = self._events[key].message.partition
                if value is _DELETED:
                    store.delete(key, partition)
                else:
                    store.write(key, PackedTable.pack(value) if packed else value, partition)
        else:
            for key, value in self._dirty.items():
                in_event(self._events[key])
                if value is _DELETED:
                    if key in self.table:
                        del self.table[key]
                else:
                    self.table[key] = value
        n = len(self._dirty)
        self._dirty.clear()
        self._events.clear()
        self._absent.clear()
        return n


async def acked(pending: list[Any]) -> None:
    """Wait until Kafka acknowledged every send in ``pending`` (the futures ``topic.send`` returns).

    The rule that makes a crash safe: a stage's *effects* (messages to other stages) must be durable
    before its *memory* of having produced them (table changelog).  Otherwise a kill -9 between the
    two leaves a table that says "done" for work whose messages never left, and the re-read after
    restart skips it — a lost order.  So: send, wait for the acks, then write the tables.
    """
    import asyncio

    if pending:
        await asyncio.gather(*pending)
        pending.clear()
    GUARDS.freeze.check("acked")


async def prior_writes_durable(outbox: Any, stage: str) -> None:
    """Wait until Kafka acknowledged every record this worker sent so far — the previous batches'
    table writes above all — then check for a freeze.  Call it before a batch's first effect leaves.

    Why (the long-form zombie scenario; ``late_records`` in tests/integration/faults.py counts
    them): a batch's table writes are queued in librdkafka without waiting for them.  A worker
    frozen (SIGSTOP, a VM pause) while they are queued sends them when it wakes, after the group
    gave its partitions to another worker that recovered the tables without them.  Had the frozen
    worker also sent effects computed from that state — a shipment request for a plan only that
    state records — the new owner, re-reading the same input, plans the order again under a new
    plan id, and the warehouse gets two shipment requests for one line.  Waiting here means an
    effect leaves only once the state it was computed from is in Kafka; the wait is usually nil
    (the writes went out while the batch was processed); ``peakroute_effects_gate_seconds`` shows it."""
    started = time.perf_counter()
    await outbox.flushed()
    m.EFFECTS_GATE_SECONDS.labels(stage).observe(time.perf_counter() - started)
    GUARDS.freeze.check(stage)


#: Redis key that says "the stock view of this stock-ops partition is complete in this Redis".
def stock_view_mark(partition: int) -> str:
    return f"peakroute:stock-view:complete:{partition}"


def levels_of_partitions(levels: Iterable[tuple[str, Any]], partitions: set[int], n: int
                         ) -> list[tuple[str, str, tuple[int, int, int]]]:
    """(sku, warehouse, (on_hand, reserved, safety)) of every stock level owned by ``partitions``
    (table keys are ``sku|warehouse``)."""
    out = []
    for key, level in levels:
        sku, _, wh = str(key).rpartition("|")
        if sku and level and sku_partition(sku, n) in partitions:
            on_hand, reserved, safety = (int(x) for x in level[:3])
            out.append((sku, wh, (on_hand, reserved, safety)))
    return out


def install_stock_view_repair(app: faust.App, *, levels: Any, views: Any, stock_ops_topic: str, partitions: int,
                              every_s: float = 10.0) -> None:
    """The SKU owners republish the whole stock view of their partitions when Redis lost it.

    The stock agent publishes a (SKU, warehouse) level only when it changes, so a Redis restarted
    empty would get back only the levels touched since, and planners would see no stock at the
    other warehouses (orders backordered while stock exists) until each happened to move.  Each
    owner keeps a mark per partition in Redis; a missing mark (Redis emptied, or a partition just
    assigned) makes it republish that partition's levels from its table and set the mark.
    """

    @app.timer(interval=every_s, on_leader=False)
    async def repair_stock_view() -> None:
        # Only with the tables settled: between an assignment and its recovery the table holds
        # none of the new partitions' levels, and the mark would be set over an empty republish
        # (seen in the fault logs: "republished for partitions [5] (0 levels)" mid-rebalance).
        if not tables_settled(app):
            return
        try:
            owned = sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == stock_ops_topic)
        except Exception:  # noqa: BLE001 - not assigned yet
            return
        if not owned:
            return
        try:
            pipe = views.redis.pipeline(transaction=False)
            for p in owned:
                pipe.exists(stock_view_mark(p))
            missing = {p for p, present in zip(owned, await pipe.execute(), strict=True) if not present}
            if not missing:
                return
            found = levels_of_partitions(list(levels.items()), missing, partitions)
            await views.publish_stock(found)
            pipe = views.redis.pipeline(transaction=False)
            for p in missing:
                pipe.set(stock_view_mark(p), "1")
            await pipe.execute()
            log.info("stock view republished for partitions %s (%d levels)", sorted(missing), len(found))
        except Exception as exc:  # noqa: BLE001 - Redis away: try again next tick
            log.warning("stock view not repaired (redis): %r", exc)
