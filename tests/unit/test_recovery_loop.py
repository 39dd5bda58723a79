"""The grouped recovery loop (peakroute/tables/recovery.py) against a stand-in for faust's
``Recovery`` (only the attributes the loop touches); the real thing is exercised by every worker
start of the integration tests and by ``benchmarks/drain.py --restart``."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict, deque
from types import SimpleNamespace

from faust.types import TP

from peakroute.tables import recovery

LEVELS, HOLDS, ELSEWHERE = TP("levels-changelog", 0), TP("holds-changelog", 1), TP("other-changelog", 2)


class Table:
    recovery_buffer_size = 3
    standby_buffer_size = 3
    _on_changelog_event = None

    def __init__(self) -> None:
        self.applied: list[list[int]] = []

    def apply_changelog_batch(self, events: list) -> None:
        self.applied.append([e.message.offset for e in events])


class StandIn:
    """What ``_slurp_changelogs`` reads and writes of faust's Recovery."""

    def __init__(self, highwaters: dict[TP, int]) -> None:
        self.levels, self.holds = Table(), Table()
        self.tables = SimpleNamespace(changelog_queue=asyncio.Queue(), standbys_ready=True)
        self.tp_to_table = {LEVELS: self.levels, HOLDS: self.holds, ELSEWHERE: self.levels}
        self.active_tps = {LEVELS, HOLDS}
        self.standby_tps: set = set()
        self.active_offsets: Counter = Counter()
        self.standby_offsets: Counter = Counter()
        self.active_highwaters = highwaters
        self._active_events_received_at: dict = {}
        self._standby_events_received_at: dict = {}
        self.buffers: defaultdict = defaultdict(list)
        self.buffer_sizes: dict = {}
        self._processing_times: deque = deque()
        self.num_samples_required_for_estimate = 5
        self._last_active_event_processed_at = None
        self._last_flush_at = 0.0
        self.signal_recovery_end = asyncio.Event()
        self.should_stop = False
        self.in_recovery = True
        self.ended = 0
        self._actives_span = self._standbys_span = None
        self.app = SimpleNamespace(in_transaction=False)

    def need_recovery(self) -> bool:
        return any(self.active_offsets.get(tp, -1) < hw for tp, hw in self.active_highwaters.items())

    def flush_buffers(self) -> None:
        for table, buf in self.buffers.items():
            table.apply_changelog_batch(buf)
            buf.clear()

    def _set_recovery_ended(self) -> None:
        self.in_recovery = False
        self.ended += 1

    def standby_remaining_total(self) -> int:
        return 0


def record(tp: TP, offset: int) -> SimpleNamespace:
    return SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset))


def test_records_already_queued_are_applied_in_one_wake_up_per_table_buffer_in_order() -> None:
    async def main() -> StandIn:
        rec = StandIn({LEVELS: 4, HOLDS: 1})
        for r in [record(LEVELS, o) for o in range(5)] + [record(HOLDS, 0), record(ELSEWHERE, 9),
                                                          record(LEVELS, 3), record(HOLDS, 1)]:
            rec.tables.changelog_queue.put_nowait(r)
        task = asyncio.ensure_future(recovery._slurp_changelogs(rec))
        await asyncio.wait_for(rec.signal_recovery_end.wait(), 5)
        rec.should_stop = True
        task.cancel()
        return rec

    rec = asyncio.run(main())
    assert rec.ended == 1 and not rec.in_recovery
    # Buffers of 3 applied as they fill, the rest at the end; an offset seen again (3) is not
    # applied twice; a partition neither active nor standby here (ELSEWHERE) is left out.
    assert rec.levels.applied == [[0, 1, 2], [3, 4]]
    assert rec.holds.applied == [[0, 1]]
    assert dict(rec.active_offsets) == {LEVELS: 4, HOLDS: 1}


def test_install_replaces_fausts_loop_and_raw_channels_only_for_the_rocksdb_store(tmp_path) -> None:
    from dataclasses import replace

    from faust.tables.recovery import Recovery
    from mode.services import ServiceTask

    from peakroute.config import Settings
    from peakroute.streams.app import build_app

    base = replace(Settings(), kafka_bootstrap="127.0.0.1:1", state_dir=str(tmp_path))
    rocks = build_app(base)
    task = Recovery.__dict__["_slurp_changelogs"]
    assert isinstance(task, ServiceTask) and task.fun is recovery._slurp_changelogs
    assert getattr(rocks.tables, "_peakroute_raw_changelogs", False)
    memory = build_app(replace(base, table_store="memory", app_id="peakroute-memory"))
    assert not getattr(memory.tables, "_peakroute_raw_changelogs", False)


def test_a_raw_changelog_channel_hands_over_the_records_bytes() -> None:
    """What recovery gets from a changelog channel after :func:`recovery.raw_changelog_channels`:
    an event of the raw key and value (our RocksDB store writes exactly those bytes)."""
    import faust
    from faust.channels import Channel

    app = faust.App("raw-decode-test", broker="kafka://127.0.0.1:1", key_serializer="json",
                    value_serializer="json")
    topic = app.topic("t")
    message = SimpleNamespace(key=b'"k"', value=b'{"a": 1}', headers=[], topic="t", partition=0, offset=7)
    raw = Channel.decode.__get__(topic)

    async def main() -> tuple:
        decoded = await topic.decode(message)  # what faust's compiled decode gives
        event = await raw(message)
        return decoded.key, decoded.value, event.key, event.value

    assert asyncio.run(main()) == ("k", {"a": 1}, b'"k"', b'{"a": 1}')


class _FakeAdmin:
    """list_offsets answered from a dict, as confluent's AdminClient would (one future per partition)."""

    def __init__(self, offsets: dict[tuple[str, int], int]) -> None:
        self.offsets, self.calls = offsets, []

    def list_offsets(self, request, **kwargs):
        import concurrent.futures

        self.calls.append((request, kwargs))
        out = {}
        for ctp in request:
            fut: concurrent.futures.Future = concurrent.futures.Future()
            fut.set_result(SimpleNamespace(offset=self.offsets[(ctp.topic, ctp.partition)]))
            out[ctp] = fut
        return out


def test_offset_queries_answer_for_fausts_partitions() -> None:
    from confluent_kafka import IsolationLevel

    queries = recovery.OffsetQueries("127.0.0.1:1")
    queries._admin = _FakeAdmin({("t-changelog", 0): 41, ("t-changelog", 3): 7})
    tps = [TP("t-changelog", 0), TP("t-changelog", 3)]
    assert asyncio.run(queries.query(tps, latest=True)) == {tps[0]: 41, tps[1]: 7}
    assert asyncio.run(queries.query([], latest=False)) == {}  # nothing asked of the broker
    assert len(queries._admin.calls) == 1
    assert queries._admin.calls[0][1]["isolation_level"] == IsolationLevel.READ_UNCOMMITTED


def test_offset_queries_fall_back_to_fausts_path_on_error_or_in_a_transaction(monkeypatch) -> None:
    from faust.transport.drivers.aiokafka import Consumer

    asked: list[tuple[str, tuple]] = []

    async def faust_highwaters(self, *partitions):
        asked.append(("faust", partitions))
        return {tp: 99 for tp in partitions}

    monkeypatch.setattr(Consumer, "highwaters", faust_highwaters)
    monkeypatch.setattr(Consumer, "earliest_offsets", faust_highwaters)

    async def broken(self, partitions, latest):
        asked.append(("own", tuple(partitions)))
        raise RuntimeError("broker away")

    monkeypatch.setattr(recovery.OffsetQueries, "query", broken)
    recovery.offsets_on_own_connection("127.0.0.1:1")
    recovery.offsets_on_own_connection("127.0.0.1:1")  # again: wraps faust's, not its own wrapper
    assert Consumer.highwaters._peakroute_original is faust_highwaters
    tp = TP("t-changelog", 1)
    consumer = SimpleNamespace(in_transaction=False)
    assert asyncio.run(Consumer.highwaters(consumer, tp)) == {tp: 99}
    assert asked == [("own", (tp,)), ("faust", (tp,))]
    asked.clear()
    consumer.in_transaction = True
    assert asyncio.run(Consumer.earliest_offsets(consumer, tp)) == {tp: 99}
    assert asked == [("faust", (tp,))]
