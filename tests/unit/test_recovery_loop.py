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
