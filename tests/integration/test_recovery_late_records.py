"""A frozen former owner's late changelog write stays out of a real worker's recovery.

The record sequence a SIGSTOP zombie leaves on a changelog partition (see peakroute/tables/stale.py,
and ``late_records`` in faults.py, which counts them in the fault scenarios) is written here
directly to the stock-levels changelog of a real Kafka: owner A (generation 5), owner B
(generation 6), then a write of A's produced before B's but delivered after it.  A worker started
on it must recover B's level, which the SKU owner republishes to the Redis stock view — through the
bulk restore (the default) and through faust's recovery alone.

Log compaction keeps only a key's newest record, and the late write is the newest: so the worker
must also write the key again after it (tables/repair.py) — for the late write its recovery left
out, and for one that arrives while it runs.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from peakroute.agents.common import sku_partition
from peakroute.config import Settings
from peakroute.stack import LocalStack
from peakroute.streams.topics import changelog_specs, changelog_topic
from peakroute.tables.redis_views import RedisViews
from peakroute.tables.stale import GENERATION_HEADER, generation_of

from ..conftest import local_stack
from .harness import PeakrouteProcess, partition_records, unique_app_id

pytestmark = pytest.mark.integration


def key_records(settings: Settings, topic: str, partition: int, key: bytes,
                after: int) -> list[tuple[int, bytes, int | None]]:
    """(offset, value, writer generation) of ``key``'s records on a changelog partition past ``after``."""
    return [(msg.offset(), msg.value(), generation_of(msg.headers()))
            for msg in partition_records(settings, topic, partition, after + 1) if msg.key() == key]


def recovered_view(settings: Settings, sku: str, worker: PeakrouteProcess) -> dict:
    """The SKU's Redis stock view once ``worker`` has republished WH-SOUTH's level from its
    recovered table (the stock view repair, every 10 s), or what it holds after 120 s."""

    async def stock_view() -> dict:
        views = RedisViews(settings.redis_url)
        try:
            return await views.stock_of(sku)
        finally:
            await views.close()

    seen: dict = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "WH-SOUTH" not in seen:
        assert worker.alive(), worker.output()[-3000:]
        time.sleep(1)
        seen = asyncio.run(stock_view())
    return seen


@pytest.mark.parametrize("restore", ["bulk", "faust"])
def test_a_late_changelog_write_of_a_replaced_owner_is_not_recovered(tmp_path: Path, restore: str) -> None:
    with local_stack(tmp_path / "stack") as base:
        settings = replace(base, app_id=unique_app_id("late"))
        LocalStack(settings).ensure_topics(changelog_specs(settings))
        topic = changelog_topic(settings.app_id, "stock-levels")
        sku = "T-LATE"
        partition = sku_partition(sku, settings.partitions)
        now_ms = int(time.time() * 1000)

        def level(warehouse: str, on_hand: int, generation: int, age_s: float) -> dict:
            return {"topic": topic, "partition": partition, "key": orjson.dumps(f"{sku}|{warehouse}"),
                    "value": orjson.dumps([on_hand, 0, 0]), "timestamp": now_ms - int(age_s * 1000),
                    "headers": [(GENERATION_HEADER, str(generation).encode())]}

        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True})
        for record in (level("WH-EAST", 10, 5, 60),     # owner A
                       level("WH-EAST", 20, 6, 30),     # owner B, after A was declared gone
                       level("WH-SOUTH", 7, 6, 29),     # owner B
                       level("WH-EAST", 99, 5, 59)):    # A's write queued before its freeze, sent on waking
            producer.produce(**record)
        assert producer.flush(30) == 0

        worker = PeakrouteProcess(settings, ["worker", "--metrics-port", "0"], tmp_path / "worker.log",
                                  PEAKROUTE_TABLE_RESTORE=restore)
        try:
            seen = recovered_view(settings, sku, worker)
            assert seen.get("WH-SOUTH", {}).get("on_hand") == 7, (seen, worker.output()[-3000:])
            assert seen["WH-EAST"]["on_hand"] == 20, f"the late write was recovered: {seen}"
            assert "changelog record(s) left out of recovery" in worker.output()
            by_bulk = "left out of recovery (bulk restore)" in worker.output()
            assert by_bulk == (restore == "bulk"), worker.output()[-3000:]

            # The owner wrote the left-out key again after the late write, with its own generation.
            east = orjson.dumps(f"{sku}|WH-EAST")
            repairs = key_records(settings, topic, partition, east, 3)
            assert repairs and orjson.loads(repairs[-1][1]) == [20, 0, 0], (repairs, worker.output()[-3000:])
            generation = repairs[-1][2]
            assert generation >= 1

            # A late write arriving while the worker runs (an older generation than the worker's):
            # written again too.
            south = orjson.dumps(f"{sku}|WH-SOUTH")
            producer.produce(**{**level("WH-SOUTH", 55, generation - 1, 1), "timestamp": int(time.time() * 1000)})
            assert producer.flush(30) == 0
            late_at = next(off for off, value, _ in key_records(settings, topic, partition, south, -1) if orjson.loads(value) == [55, 0, 0])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not key_records(settings, topic, partition, south, late_at):
                time.sleep(0.5)
            after = key_records(settings, topic, partition, south, late_at)
            assert after and orjson.loads(after[-1][1]) == [7, 0, 0] and after[-1][2] == generation, \
                (after, worker.output()[-3000:])
            assert "written again after a replaced owner's late write" in worker.output()
        finally:
            worker.stop()
        assert "Traceback" not in worker.output(), worker.output()[-4000:]


def test_after_compaction_the_owners_value_of_a_late_written_key_survives(tmp_path: Path) -> None:
    """The hazard the repair closes, end to end on a real broker: compaction keeps a key's newest
    record only.  Segments close every second here, so the log cleaner runs within the test; once
    it has, the owner's earlier record and the late one are both gone and only the owner's repair
    is left — and a fresh worker recovers the owner's level from it."""
    import redis

    with local_stack(tmp_path / "stack") as base:
        settings = replace(base, app_id=unique_app_id("compact"), changelog_segment_ms=1000)
        LocalStack(settings).ensure_topics(changelog_specs(settings))
        topic = changelog_topic(settings.app_id, "stock-levels")
        sku = "T-COMPACT"
        partition = sku_partition(sku, settings.partitions)
        east = orjson.dumps(f"{sku}|WH-EAST")
        now_ms = int(time.time() * 1000)

        def level(warehouse: str, on_hand: int, generation: int | None, age_s: float, key_sku: str = sku) -> dict:
            headers = [] if generation is None else [(GENERATION_HEADER, str(generation).encode())]
            return {"topic": topic, "partition": partition, "key": orjson.dumps(f"{key_sku}|{warehouse}"),
                    "value": orjson.dumps([on_hand, 0, 0]), "timestamp": now_ms - int(age_s * 1000),
                    "headers": headers}

        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True})
        for record in (level("WH-EAST", 20, 6, 30),     # owner B
                       level("WH-SOUTH", 7, 6, 29),     # owner B
                       level("WH-EAST", 99, 5, 59)):    # replaced owner A's write, delivered late
            producer.produce(**record)
        assert producer.flush(30) == 0

        def east_values() -> list[list[int]]:
            return [orjson.loads(value) for _, value, _ in key_records(settings, topic, partition, east, -1)]

        env = {"PEAKROUTE_CHANGELOG_SEGMENT_MS": "1000"}  # a worker ensures the topics' configs too
        first = PeakrouteProcess(settings, ["worker", "--metrics-port", "0"], tmp_path / "first.log", **env)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and east_values()[-1:] != [[20, 0, 0]]:
                assert first.alive(), first.output()[-3000:]
                time.sleep(1)
            assert east_values()[-1:] == [[20, 0, 0]], (east_values(), first.output()[-3000:])
            # Segments close on the next write after a second: a record of another key every
            # second (no generation header: an old build's, never judged) until the cleaner has run.
            deadline = time.monotonic() + 120
            filler = 0
            while time.monotonic() < deadline and east_values() != [[20, 0, 0]]:
                filler += 1
                producer.produce(**{**level("WH-EAST", filler, None, 0, key_sku="T-FILLER"),
                                    "timestamp": int(time.time() * 1000)})
                producer.flush(30)
                time.sleep(1)
            # Only the repair is left: without it, compaction would have kept the late 99 alone,
            # and recovery, leaving that out, would have found no level for the key.
            assert east_values() == [[20, 0, 0]], east_values()
        finally:
            first.stop()
        assert "Traceback" not in first.output(), first.output()[-4000:]

        redis.Redis.from_url(settings.redis_url).flushall()  # the next worker republishes its levels
        second = PeakrouteProcess(settings, ["worker", "--metrics-port", "0"], tmp_path / "second.log", **env)
        try:
            seen = recovered_view(settings, sku, second)
            assert seen.get("WH-EAST", {}).get("on_hand") == 20, (seen, second.output()[-3000:])
            assert seen["WH-SOUTH"]["on_hand"] == 7
        finally:
            second.stop()
        assert "Traceback" not in second.output(), second.output()[-4000:]
