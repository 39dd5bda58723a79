"""A faster table recovery: the changelog records a worker reads when it starts or takes over
partitions, applied in groups and without deserializing them.

Why: every worker start rebuilds its tables from the changelogs (tables/store.py says why), and
a takeover does the same for the partitions it gets, so recovery time is how long a partition
stands still after a crash or a rebalance (the capacity model's early breaking point).  Measured
(``python benchmarks/drain.py --orders 30000 --restart``, 2026-12-05): faust-streaming 0.15.3
recovered ~3,000–4,000 records/s here with the worker's core at 100% — ~250 µs of CPU per record.
Its profile: a quarter in decoding each record's key and value (JSON), which our RocksDB store
never uses (it writes the raw bytes: ``faust.stores.rocksdb.Store.apply_changelog_batch``), and
a fifth in the per-record bookkeeping of ``Recovery._slurp_changelogs`` (an ``asyncio.wait_for``
task per record, a Counter over every partition's highwater per record to ask "done yet?", two
f-string debug logs per record).

Two changes, both for faust-streaming 0.15.3 only (the version ``requirements.lock`` pins):

* :func:`raw_changelog_channels` — the tables' changelog channels hand recovery the records as
  they are (``Channel.decode``: an event of the raw key and value bytes), when the tables are in
  our RocksDB store; the in-memory store (``PEAKROUTE_TABLE_STORE=memory``) decodes as before.
* :data:`slurp_changelogs` — faust's loop, taking every record already queued (up to
  :data:`GROUP_MAX`) after each wait, asking "done yet?" once per group, and skipping (with a
  warning) a record of a partition that is neither active nor standby here, which faust's loop
  would apply to whatever table the previous record belonged to (its own comment calls it a bug).
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import Any

log = logging.getLogger("peakroute.recovery")

#: Records applied per wake-up of the recovery loop, at most.  It yields to the event loop
#: between groups (the fetcher fills the queue meanwhile); faust's loop woke up once per record.
GROUP_MAX = 2000


def raw_changelog_channels(app: Any) -> None:
    """Make the changelog channels of ``app``'s tables deliver undecoded records (see the module
    docstring).  Call only when every table of ``app`` uses our RocksDB store."""
    from faust.channels import Channel

    manager = app.tables
    if getattr(manager, "_peakroute_raw_changelogs", False):
        return
    original = manager._update_channels

    async def _update_channels() -> None:
        await original()
        for chan in manager._channels.values():
            # Channel.decode makes the event from the raw key, value and headers; Topic.decode,
            # which faust compiled onto the instance, deserializes them first.
            chan.decode = Channel.decode.__get__(chan)

    manager._update_channels = _update_channels
    manager._peakroute_raw_changelogs = True


async def _slurp_changelogs(self: Any) -> None:  # noqa: C901 - faust's loop, kept in one piece to compare
    """faust-streaming 0.15.3's ``Recovery._slurp_changelogs``, a group of records per wake-up."""
    changelog_queue = self.tables.changelog_queue
    tp_to_table = self.tp_to_table
    active_tps = self.active_tps
    standby_tps = self.standby_tps
    active_offsets = self.active_offsets
    standby_offsets = self.standby_offsets
    active_events_received_at = self._active_events_received_at
    standby_events_received_at = self._standby_events_received_at
    buffers = self.buffers
    buffer_sizes = self.buffer_sizes
    processing_times = self._processing_times

    async def _maybe_signal_recovery_end(timeout: bool = False, timeout_count: int = 0) -> None:
        # faust waits for 2 consecutive empty cycles before the aborted-transaction check.
        if timeout and self.app.in_transaction and timeout_count > 1:
            await detect_aborted_tx()
        if self.in_recovery and not self.need_recovery():
            self.flush_buffers()
            self._set_recovery_ended()
            if self._actives_span is not None:
                self._actives_span.set_tag("Actives-Ready", True)
            self.signal_recovery_end.set()

    async def detect_aborted_tx() -> None:
        highwaters = self.active_highwaters
        offsets = self.active_offsets
        for tp, highwater in highwaters.items():
            if highwater is not None and offsets[tp] is not None and offsets[tp] < highwater:
                if await self.app.consumer.position(tp) >= highwater:
                    log.info("Aborted tx until highwater for %s", tp)
                    offsets[tp] = highwater

    timeout_count = 0
    while not self.should_stop:
        try:
            self.signal_recovery_end.clear()
            try:
                first = await asyncio.wait_for(changelog_queue.get(), timeout=5.0)
            except TimeoutError:
                timeout_count += 1
                if self.should_stop:
                    return
                await _maybe_signal_recovery_end(timeout=True, timeout_count=timeout_count)
                continue
            events = [first]
            error: BaseException | None = None
            while len(events) < GROUP_MAX and not changelog_queue.empty():
                try:
                    events.append(changelog_queue.get_nowait())
                except Exception as exc:  # noqa: BLE001 - a thrown error: after this group, as faust would
                    error = exc
                    break
            now = monotonic()
            timeout_count = 0
            for event in events:
                message = event.message
                tp = message.tp
                offset = message.offset
                bufsize = buffer_sizes.get(tp)
                is_active = False
                if tp in active_tps:
                    is_active = True
                    table = tp_to_table[tp]
                    offsets = active_offsets
                    if bufsize is None:
                        bufsize = buffer_sizes[tp] = table.recovery_buffer_size
                    active_events_received_at[tp] = now
                elif tp in standby_tps:
                    table = tp_to_table[tp]
                    offsets = standby_offsets
                    if bufsize is None:
                        bufsize = buffer_sizes[tp] = table.standby_buffer_size
                        standby_events_received_at[tp] = now
                else:
                    log.warning("recovery: a record of %s (offset %s), neither active nor standby here: skipped",
                                tp, offset)
                    continue
                seen_offset = offsets.get(tp, None)
                if seen_offset is None or offset > seen_offset:
                    offsets[tp] = offset
                    buf = buffers[table]
                    buf.append(event)
                    if table._on_changelog_event:
                        await table.on_changelog_event(event)
                    if len(buf) >= bufsize:
                        table.apply_changelog_batch(buf)
                        buf.clear()
                        self._last_flush_at = now
                    if is_active:
                        now_after = monotonic()
                        last_processed_at = self._last_active_event_processed_at
                        if last_processed_at is not None:
                            processing_times.append(now_after - last_processed_at)
                            if len(processing_times) > self.num_samples_required_for_estimate:
                                processing_times.popleft()
                        self._last_active_event_processed_at = now_after
            await _maybe_signal_recovery_end()
            standby_ready = self._standbys_span is None and self.tables.standbys_ready
            if not standby_ready and not self.standby_remaining_total():
                if self._standbys_span:
                    from faust.utils.tracing import finish_span

                    finish_span(self._standbys_span)
                    self._standbys_span = None
                self.tables.on_standbys_ready()
            if error is not None:
                raise error
        except Exception as ex:  # noqa: BLE001 - faust's loop logs and goes on
            log.warning("Error in recovery %s", ex)


def install() -> bool:
    """Replace faust's recovery loop (idempotent).  False if the installed faust is not 0.15.3."""
    from faust.tables.recovery import Recovery
    from mode.services import ServiceTask

    from ..streams.consumer_fix import FAUST_VERSION, installed_faust_version

    if installed_faust_version() != FAUST_VERSION:
        log.error("faust-streaming %s installed, the recovery loop is for %s: faust's own is used",
                  installed_faust_version(), FAUST_VERSION)
        return False
    if not getattr(Recovery, "_peakroute_grouped", False):
        Recovery._slurp_changelogs = ServiceTask(_slurp_changelogs)  # type: ignore[assignment]
        Recovery._peakroute_grouped = True  # type: ignore[attr-defined]
    return True


#: How long one offset query on the recovery's own connection may take before faust's path is used.
OFFSET_QUERY_TIMEOUT_S = 10.0


class OffsetQueries:
    """The changelog partitions' high watermarks and earliest offsets that faust's recovery asks
    for at every rebalance, asked on a connection of their own (a librdkafka admin client).

    Why: faust asks through the worker consumer's connection to the broker (aiokafka
    ``end_offsets`` / ``beginning_offsets``: ListOffsets requests), where each request queues
    behind the consumer's fetch in flight — and the broker holds a fetch while the fetched
    partitions have nothing new (idle inputs; changelogs read to their end by the bulk restore).
    Measured (benchmarks/RESULTS.md, 2026-12-05 afternoon): ~0.4 + 1.5 s of every recovery, while
    the partitions stand still.  The same requests on their own connection: the same answers (the
    log end offset, read uncommitted, as faust's non-transactional path asks; the log start
    offset), without the queue.  Any error falls back to faust's own path."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._admin: Any = None

    def _client(self) -> Any:
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient({"bootstrap.servers": self.bootstrap,
                                       "client.id": "peakroute-recovery-offsets"})
        return self._admin

    async def query(self, partitions: Any, latest: bool) -> dict[Any, int]:
        """``{tp: offset}`` for faust's TPs: the high watermark (``latest``) or the log start offset."""
        from confluent_kafka import IsolationLevel, TopicPartition
        from confluent_kafka.admin import OffsetSpec

        tps = list(partitions)
        if not tps:
            return {}
        spec = OffsetSpec.latest() if latest else OffsetSpec.earliest()
        asked = [(tp, TopicPartition(tp.topic, tp.partition)) for tp in tps]
        futures = self._client().list_offsets({ctp: spec for _, ctp in asked},
                                              isolation_level=IsolationLevel.READ_UNCOMMITTED,
                                              request_timeout=OFFSET_QUERY_TIMEOUT_S)
        results = await asyncio.wait_for(
            asyncio.gather(*(asyncio.wrap_future(futures[ctp]) for _, ctp in asked)),
            timeout=OFFSET_QUERY_TIMEOUT_S + 2)
        return {tp: int(info.offset) for (tp, _), info in zip(asked, results, strict=True)}


def offsets_on_own_connection(bootstrap: str) -> None:
    """Answer the worker consumer's ``highwaters`` / ``earliest_offsets`` (asked only by faust's
    table recovery) through :class:`OffsetQueries` (installed once per process; the last call's
    ``bootstrap`` is used)."""
    from faust.transport.drivers.aiokafka import Consumer

    queries = OffsetQueries(bootstrap)
    originals = {name: getattr(getattr(Consumer, name), "_peakroute_original", getattr(Consumer, name))
                 for name in ("highwaters", "earliest_offsets")}

    def patched(name: str, latest: bool) -> Any:
        original = originals[name]

        async def ask(self: Any, *partitions: Any) -> Any:
            if self.in_transaction:  # exactly-once: faust reads the last stable offsets instead
                return await original(self, *partitions)
            try:
                return await queries.query(partitions, latest=latest)
            except Exception as exc:  # noqa: BLE001 - faust's own path still answers, only slower
                log.warning("offset query on the recovery's own connection failed (%r): asking "
                            "through the consumer", exc)
                return await original(self, *partitions)

        ask._peakroute_original = original  # type: ignore[attr-defined]
        return ask

    Consumer.highwaters = patched("highwaters", latest=True)  # type: ignore[method-assign]
    Consumer.earliest_offsets = patched("earliest_offsets", latest=False)  # type: ignore[method-assign]
