"""Offset bugs of faust-streaming 0.15.3's consumer, fixed where they happen.

Why this exists: our fault suite lost orders around rebalances (scale 1→3→1, a zombie worker
woken after its partitions moved, a worker joining late).  faust-streaming's consumer loop
(``Consumer._drain_messages``) trusts every record it is handed:

1. **Jumps.**  When a record's offset is more than one past the last one read, faust notes the
   jump as an acked "gap" and commits past it.  Jumps happen without any hole in the topic:
   records prefetched before a rebalance and handed out after it (faust-streaming #221), records
   of a partition paused between fetch and delivery (``Consumer.getmany`` drops them while the
   fetch position has already moved on), a read offset written back after a rebalance reset it.
   The records in between are never processed and never read again: lost.
2. **Off by one at the head.**  ``Consumer._new_offset`` commits past the committed offset C when
   C itself was never acked but C+1… were (it tests ``min(acked) - C > 1``, faust-streaming #606).
   One record dropped at the head of a partition is silently committed past.

3. **Drops at the tail.**  A jump is only seen when a later record arrives.  Records dropped
   between fetch and delivery at the end of what a partition holds (the last records of a burst;
   ``getmany`` drops a partition's records once it leaves the active set mid-fetch, e.g. because
   its stream buffer filled) are followed by nothing: the
   fetch position has moved past them, faust's read offset has not, and the commit waits forever
   for records nobody will fetch again (seen in the rebalance fault test: lag stuck at 4–31 with
   no error).  And a record whose delivery was cut short by the flow stopping was counted as read.

4. **No anchor without a commit.**  A partition the group never committed (its owners all
   killed before their first commit) is not moved by aiokafka's seek-to-committed, and every
   guard that judges records against the committed offset takes whatever comes first
   (:func:`_perform_seek_factory`).

The fix, for our own input topics only (never compacted, never written transactionally, so a
real hole cannot happen there in normal operation): a jump **rewinds** the partition to the first
missing offset and drops the records fetched past it; the records are then fetched again, in order.
Between fetches (every second), a partition whose fetch position is past the next offset the loop
expects is rewound the same way (case 3), and an undelivered record stays the next one expected.
A hole still there after a few rewinds is real (retention deleted unread data, an operator trimmed
the topic): it is accepted as faust would, but logged as an error and counted
(``peakroute_offset_holes_total``).  Every rewind is counted (``peakroute_offset_rewinds_total``).
Changelog topics (compacted) keep faust's behaviour.

The drain loop below is faust-streaming 0.15.3's own, with the input-topic branch added; it is
installed only on that version (``requirements.lock`` pins it; a test checks the pin).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, cast

log = logging.getLogger("peakroute.consumer")

#: The faust-streaming version whose consumer loop is reproduced below.
FAUST_VERSION = "0.15.3"

DELIVER, DUPLICATE, REWIND, SKIP, HOLE = "deliver", "duplicate", "rewind", "skip", "hole"
#: Rewinds to the same offset before a hole is believed to be real.
MAX_REWINDS = 3
#: Numbers every fetch of the process (see OffsetTracker).
_FETCHES = itertools.count(1)
#: How often, between fetches, the fetch positions are compared with what was delivered.
OVERRUN_CHECK_S = 1.0


@dataclass
class OffsetTracker:
    """Per input partition: the next offset expected, and the rewind in progress (pure logic).

    ``batch`` numbers the fetches: records after a rewind but in the same fetch were fetched
    before the rewind and are skipped; a later fetch that still starts past the target means the
    offsets are really missing.
    """

    expected: dict[Any, int | None] = field(default_factory=dict)
    rewinding: dict[Any, tuple[int, int, int]] = field(default_factory=dict)  # tp -> (target, batch, tries)

    def reset(self, tp: Any, next_offset: int | None) -> None:
        """The partition's position was set from outside (seek to committed, revocation)."""
        self.expected[tp] = next_offset
        self.rewinding.pop(tp, None)

    def decide(self, tp: Any, offset: int, batch: int) -> tuple[str, int | None]:
        """What to do with the record at ``offset``: (verdict, first missing offset or None)."""
        want = self.expected.get(tp)
        if want is None or offset == want:
            self.expected[tp] = offset + 1
            self.rewinding.pop(tp, None)
            return DELIVER, None
        if offset < want:
            return DUPLICATE, None  # read already since the last seek
        target, at_batch, tries = self.rewinding.get(tp, (want, -1, 0))
        if target == want and at_batch == batch:
            return SKIP, None  # fetched before this batch's rewind took effect
        if target == want and tries >= MAX_REWINDS:
            self.expected[tp] = offset + 1
            self.rewinding.pop(tp, None)
            return HOLE, want
        self.rewinding[tp] = (want, batch, (tries if target == want else 0) + 1)
        return REWIND, want

    def expect(self, tp: Any, offset: int) -> None:
        """``offset`` must be delivered (again) next: an agent found it missing (agents.common.
        InputOrder).  The check between fetches then rewinds the partition to it."""
        want = self.expected.get(tp)
        if want is None or want > offset:
            self.expected[tp] = offset
        self.rewinding.pop(tp, None)

    def forget(self, tp: Any) -> None:
        self.expected.pop(tp, None)
        self.rewinding.pop(tp, None)

    def undelivered(self, tp: Any, offset: int) -> None:
        """The record at ``offset`` was decided but never handed to the streams (the flow stopped
        for a rebalance while it waited): it is the next one expected again."""
        want = self.expected.get(tp)
        if want is not None and want > offset:
            self.expected[tp] = offset

    def overrun(self, tp: Any, position: int | None) -> int | None:
        """Between fetches: the consumer's fetch ``position`` is past the next offset expected, so
        records were fetched and dropped before they reached the drain loop (a partition paused
        or its stream buffer full mid-fetch, the flow stopped).  When nothing follows them in the
        partition no later record reveals the jump, so this is the only way to notice.  Returns
        the offset to rewind to, or None."""
        want = self.expected.get(tp)
        if want is None or position is None or position <= want:
            return None
        return want


class ReadOffsets(defaultdict):
    """faust's ``Consumer._read_offset`` map, noting every write made outside the drain loop.

    faust writes it on every seek (``perform_seek``, ``seek``, the aiokafka thread's
    ``_seek_wait``: the *next* offset to read) and on revocation (removed); the drain loop writes
    the last offset read through :meth:`set_read`, which is not noted.  ``resets`` is what the
    loop has not looked at yet: tp -> next offset to read (None: unknown).
    """

    def __init__(self, initial: Any = ()) -> None:
        super().__init__(lambda: None, initial)
        self.resets: dict[Any, int | None] = dict(self)  # positions set before the loop started

    def __setitem__(self, tp: Any, value: Any) -> None:
        super().__setitem__(tp, value)
        self.resets[tp] = value

    def __delitem__(self, tp: Any) -> None:
        super().__delitem__(tp)
        self.resets[tp] = None

    def pop(self, tp: Any, *default: Any) -> Any:
        self.resets[tp] = None
        return super().pop(tp, *default)

    def update(self, other: Any = (), **kw: Any) -> None:  # type: ignore[override]
        for tp, value in dict(other, **kw).items():
            self[tp] = value

    def clear(self) -> None:
        for tp in list(self):
            self.resets[tp] = None
        super().clear()

    def set_read(self, tp: Any, offset: int) -> None:
        dict.__setitem__(self, tp, offset)


def overruns(tracker: OffsetTracker, resets: dict[Any, int | None], input_topics: frozenset[str],
             position: Any) -> list[tuple[Any, int]]:
    """Input partitions whose fetch position (``position(tp)``) is past the next offset expected:
    (tp, offset to rewind to).  A partition sought since its last delivered record (``resets``,
    e.g. a fresh worker's seek to the committed offset) is judged from that seek — records
    dropped before the first one ever reached the loop count too."""
    tps = set(tracker.expected) | {tp for tp in resets if tp.topic in input_topics}
    out = []
    for tp in tps:
        if tp in resets:
            if resets[tp] is None:
                continue  # position unknown (revoked, or sought to the start)
            tracker.reset(tp, resets.pop(tp))
        target = tracker.overrun(tp, position(tp))
        if target is not None:
            out.append((tp, target))
    return out


def kafka_client(consumer: Any) -> Any:
    """The aiokafka consumer inside faust's consumer thread (None before it started)."""
    return getattr(getattr(consumer, "_thread", None), "_consumer", None)


def fetch_position(kafka_consumer: Any, tp: Any) -> int | None:
    """The aiokafka consumer's position for ``tp`` (the offset after the last record it handed
    out), read without a thread hop; None when unknown (not assigned, awaiting a reset)."""
    try:
        assignment = kafka_consumer._subscription.subscription.assignment  # noqa: SLF001
        state = assignment.state_value(tp) if assignment is not None else None
        return state.position if state is not None and state.has_valid_position else None
    except Exception:  # noqa: BLE001 - mid-rebalance: unknown
        return None


def installed_faust_version() -> str:
    from importlib.metadata import version

    return version("faust-streaming")


def install(input_topics: set[str]) -> bool:
    """Patch faust's consumer (idempotent).  False if the installed faust is not the one the
    reproduced loop comes from (then nothing is patched and an error is logged)."""
    from faust.transport.consumer import Consumer

    if getattr(Consumer._drain_messages, "_peakroute_fix", False):  # noqa: SLF001
        return True
    found = installed_faust_version()
    if found != FAUST_VERSION:
        log.error("faust-streaming %s installed, the consumer fix is for %s: NOT installed — offsets may "
                  "be skipped around rebalances (install with requirements.lock)", found, FAUST_VERSION)
        return False
    Consumer._drain_messages = _drain_messages_factory(frozenset(input_topics))  # type: ignore[method-assign]  # noqa: SLF001
    Consumer._new_offset = _new_offset  # type: ignore[method-assign]  # noqa: SLF001
    Consumer.perform_seek = _perform_seek_factory(Consumer.perform_seek, frozenset(input_topics))  # type: ignore[method-assign]
    return True


def unanchored(assigned: Any, read_offset: Any, input_topics: frozenset[str]) -> list[Any]:
    """Assigned input partitions the group has no committed offset for, as faust's seek leaves
    them: read offset None (never committed) or 0 (committed 0; faust then keeps None as the
    committed offset, and aiokafka seeks only to offsets above 0)."""
    return sorted((tp for tp in assigned if tp.topic in input_topics and not read_offset.get(tp)),
                  key=lambda tp: (tp.topic, tp.partition))


def _perform_seek_factory(original: Any, input_topics: frozenset[str]) -> Any:
    """faust's ``Consumer.perform_seek`` (seek every partition to its committed offset), then the
    same for the input partitions the group never committed: their committed offset is their
    first offset.

    Why (tests/evidence/2026-12-04-kill9-lost): a partition whose owners were all killed before
    their first commit has no committed offset.  aiokafka's seek-to-committed then does not move
    it (it seeks only to offsets > 0), so records fetched and dropped while the flow was stopped
    stay skipped; and every guard that judges a record against the committed offset — the
    input-order guard (``agents.common.InputOrder``), the head test of :func:`_new_offset`, the
    drain loop's tracker — has nothing to judge against and takes whatever comes first.  A
    takeover can then act on offsets 40… and commit past 18…39 of a partition whose 0…17 a killed
    worker had already handled (20 orders lost, once in CI).  With auto_offset_reset ``earliest``
    (streams/app.py) such a partition starts at its first offset, so at every seek each of them is
    sought there, and its committed and read offsets say so (a read offset set from outside is a
    reset: the drain loop's tracker starts there too) until a real commit replaces them.  The first
    offsets are asked once per partition and process (retention moving one later is then a hole
    the guards report, as for any offset gone from the topic)."""
    starts: dict[Any, int] = {}

    async def perform_seek(self: Any) -> None:
        await original(self)
        tps = unanchored(self.assignment(), self._read_offset, input_topics)
        if not tps:
            return
        unknown = [tp for tp in tps if tp not in starts]
        try:
            if unknown:
                for tp, offset in (await self.earliest_offsets(*unknown)).items():
                    if offset is not None and offset >= 0:
                        starts[tp] = offset
                        log.info("%s[%s]: no committed offset; read from its first offset %d until one is "
                                 "committed", tp.topic, tp.partition, offset)
            for tp in tps:
                start = starts.get(tp)
                if start is None:
                    continue
                await self._seek(tp, start)
                self._committed_offset[tp] = start
                self._read_offset[tp] = start
        except Exception as exc:  # noqa: BLE001 - a rebalance under way (tp no longer assigned), the
            # broker away: the next seek (every rebalance ends with one) tries again
            log.warning("first offsets of never-committed input partitions not sought: %r", exc)
            return

    perform_seek._peakroute_fix = True  # type: ignore[attr-defined]
    return perform_seek


def _new_offset(self: Any, tp: Any) -> int | None:
    """faust-streaming 0.15.3's ``Consumer._new_offset`` with the head test fixed: nothing is
    committed until the committed offset itself (the next one to read) has been acked."""
    from faust.transport.consumer import consecutive_numbers

    acked = self._acked[tp]
    if not acked:
        return None
    max_offset = max(acked)
    gap_for_tp = self._gap[tp]
    if gap_for_tp:
        candidates = sorted(gap_for_tp.overlap(0, max_offset), key=lambda x: x.begin)
        if candidates:
            stuff_to_add: list[int] = []
            for entry in candidates:
                stuff_to_add.extend(range(entry.begin, entry.end))
            new_max_offset = max(stuff_to_add[-1], max_offset + 1)
            acked.extend(stuff_to_add)
            gap_for_tp.chop(0, new_max_offset)
    acked.sort()
    committed_offset = self._committed_offset[tp]
    if committed_offset is not None and acked[0] > committed_offset:
        return None  # the record at the committed offset is not done yet (faust tested "> 1")
    batch = next(consecutive_numbers(acked))
    acked[: len(batch)] = []
    self._acked_index[tp].difference_update(batch)
    return batch[-1] + 1


class _Rest:
    """The rest of a coroutine that :func:`run_until_suspended` started: awaiting it continues the
    coroutine exactly where it stopped (as ``await`` itself delegates), so it can still be raced,
    cancelled or awaited like the coroutine it came from."""

    def __init__(self, coro: Any, yielded: Any) -> None:
        self._coro, self._yielded = coro, yielded

    def __await__(self) -> Any:
        coro, value = self._coro, self._yielded
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - cancellation included: the coroutine decides
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def run_until_suspended(coro: Any) -> tuple[bool, Any]:
    """Run ``coro`` now, up to its first real suspension: ``(True, result)`` if it finished, else
    ``(False, rest)`` with an awaitable :class:`_Rest` that continues it.

    Why: faust delivers every fetched record by racing its delivery against the flow stopping
    (``Service.wait_first``: four tasks, ``asyncio.wait`` and three cancellations per record).
    A delivery almost never waits — it only puts the event on a stream's queue — so the race
    is needed only when it does.  The per-record tasks were ~6% of a worker's event loop."""
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, _Rest(coro, yielded)


def _drain_messages_factory(input_topics: frozenset[str]) -> Any:
    from ..metrics import registry as m

    async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover - needs a broker
        # faust-streaming 0.15.3 Consumer._drain_messages, plus the input-topic branch.
        from faust.transport.consumer import CONSUMER_FETCHING
        from mode import Service

        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set

        if not isinstance(self._read_offset, ReadOffsets):
            self._read_offset = ReadOffsets(self._read_offset)
        read_offsets: ReadOffsets = self._read_offset
        # Kept on the consumer: faust restarts this loop (the fetcher) after recoveries.
        tracker: OffsetTracker = self.__dict__.setdefault("_peakroute_offsets", OffsetTracker())

        flag_consumer_fetching = CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for

        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep

        async def rewind(tp: Any, offset: int) -> bool:
            thread = self._thread
            try:
                await thread.call_thread(lambda: thread._ensure_consumer().seek(tp, offset))
                return True
            except Exception as exc:  # noqa: BLE001 - e.g. no longer assigned: a rebalance resets it
                log.warning("%s[%s]: could not rewind to %d: %r", tp.topic, tp.partition, offset, exc)
                return False

        async def rewind_overruns() -> None:
            # Between two fetches every record handed out so far went through this loop; a fetch
            # position past what was delivered means records were dropped on the way.
            kafka_consumer = kafka_client(self)
            if kafka_consumer is None or not self.flow_active:
                return
            for tp, target in overruns(tracker, read_offsets.resets, input_topics,
                                       lambda tp: fetch_position(kafka_consumer, tp)):
                m.OFFSET_REWINDS.labels(tp.topic).inc()
                log.warning("%s[%s]: the consumer's position is past offset %d, which was never delivered "
                            "(records dropped between fetch and delivery): rewinding to it",
                            tp.topic, tp.partition, target)
                if not await rewind(tp, target):
                    tracker.forget(tp)

        def service_stopping() -> bool:
            # What wait_first reports as "not done" even when the delivery finished.
            return self._stopped.is_set() or self._crashed.is_set()

        overrun_check_at = 0.0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                if time.monotonic() >= overrun_check_at:
                    overrun_check_at = time.monotonic() + OVERRUN_CHECK_S
                    await rewind_overruns()
                set_flag(flag_consumer_fetching)
                ait = cast(Any, getmany(timeout=1.0))
                batch = next(_FETCHES)
                # Bug hunts (PEAKROUTE_LOG_LEVEL=DEBUG): what each fetch handed to the streams, and
                # what it did not, per input partition.
                trace: dict[Any, list[str]] | None = {} if log.isEnabledFor(logging.DEBUG) else None
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0

                        offset = message.offset
                        if tp.topic in input_topics:
                            if tp in read_offsets.resets:
                                tracker.reset(tp, read_offsets.resets.pop(tp))
                            verdict, missing = tracker.decide(tp, offset, batch)
                            if trace is not None:
                                trace.setdefault(tp, []).append(str(offset) if verdict == DELIVER else
                                                                f"{offset}:{verdict}")
                            if verdict in (DUPLICATE, SKIP):
                                continue
                            if verdict == REWIND:
                                m.OFFSET_REWINDS.labels(tp.topic).inc()
                                log.warning("%s[%s]: fetched offset %d where %d was next: rewinding to %d "
                                            "(records in between were skipped by the consumer)",
                                            tp.topic, tp.partition, offset, missing, missing)
                                if not await rewind(tp, cast(int, missing)):
                                    tracker.forget(tp)
                                continue
                            if verdict == HOLE:
                                m.OFFSET_HOLES.labels(tp.topic).inc()
                                log.error("%s[%s]: offsets %d..%d are missing from the topic after %d rewinds; "
                                          "continuing past them", tp.topic, tp.partition, missing, offset - 1,
                                          MAX_REWINDS)
                                gap = self._gap[tp]
                                gap.addi(cast(int, missing), offset)
                                gap.merge_overlaps()
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            finished, delivery = run_until_suspended(callback(message))
                            if not finished:  # it waits (a full queue, a paused flow): race the flow
                                waited = await self.wait_first(delivery, self.suspend_flow.wait())
                                finished = delivery in waited.done
                            if not finished or service_stopping():
                                tracker.undelivered(tp, offset)  # the flow stopped first
                                if trace is not None:
                                    trace.setdefault(tp, []).append(f"{offset}:undelivered")
                            elif tp not in read_offsets.resets:  # not reset while the callback ran
                                read_offsets.set_read(tp, offset)
                            continue

                        r_offset = read_offsets.get(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset:
                                if acks_enabled_for(message.topic):
                                    await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None:
                                if self._n_acked >= commit_every:
                                    self._n_acked = 0
                                    await self.commit()
                            finished, delivery = run_until_suspended(callback(message))
                            if not finished:
                                await self.wait_first(delivery, self.suspend_flow.wait())
                            read_offsets.set_read(tp, offset)
                    if trace:
                        log.debug("fetch %d: %s", batch, "; ".join(
                            f"{tp.topic.rsplit('.', 1)[-1]}[{tp.partition}] {' '.join(offs)}" for tp, offs in trace.items()))
                    unset_flag(flag_consumer_fetching)

        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)

    _drain_messages._peakroute_fix = True  # type: ignore[attr-defined]
    return _drain_messages


#: Least bytes the broker gathers for one fetch when fetch batching is on (see :func:`batch_fetches`).
FETCH_MIN_BYTES = 64 * 1024


def batch_fetches(max_wait_ms: int, min_bytes: int = FETCH_MIN_BYTES) -> None:
    """Let the broker hold each fetch of the worker's consumer up to ``max_wait_ms`` to gather
    ``min_bytes``; 0 restores faust's (an answer as soon as one byte is there).

    Why: faust's consumer asks with aiokafka's ``fetch_min_bytes=1``, so under a steady stream the
    broker answers every fetch at once with the few records that arrived since the last one, and
    each answer costs the consumer thread and the event loop a full round of Python work (GIL held).
    faust gives no setting for it; the created aiokafka consumer's two fields are set before it
    starts (its fetcher reads them at start).  Measured (benchmarks/RESULTS.md, 500 orders/s): 10 ms
    saved ~8% of the worker's CPU and cost ~60 ms of p50, so it is off by default."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = AIOKafkaConsumerThread._create_worker_consumer  # noqa: SLF001
    original = getattr(create, "_peakroute_original", create)
    if max_wait_ms <= 0:
        AIOKafkaConsumerThread._create_worker_consumer = original  # type: ignore[method-assign]  # noqa: SLF001
        return

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_min_bytes = min_bytes  # noqa: SLF001
        consumer._fetch_max_wait_ms = max_wait_ms  # noqa: SLF001
        return consumer

    _create_worker_consumer._peakroute_original = original  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]  # noqa: SLF001
