"""Fetch batching (streams/consumer_fix.batch_fetches, PEAKROUTE_FETCH_WAIT_MS): the worker consumer faust
creates carries our fetch wait and minimum size, and 0 gives faust's own back.  No broker: the
aiokafka consumer is only created, never started."""

from __future__ import annotations

import asyncio

import faust

from peakroute.streams import consumer_fix


def test_batch_fetches_sets_the_created_consumers_fetch_fields() -> None:
    app = faust.App("t-fetch", broker="kafka://127.0.0.1:1")
    thread = app.consumer._thread

    async def created() -> tuple[int, int]:
        ak = thread._create_worker_consumer(app.transport)
        return ak._fetch_min_bytes, ak._fetch_max_wait_ms

    try:
        consumer_fix.batch_fetches(10)
        assert asyncio.run(created()) == (consumer_fix.FETCH_MIN_BYTES, 10)
        consumer_fix.batch_fetches(25)  # again: wraps faust's original, not the previous patch
        assert asyncio.run(created()) == (consumer_fix.FETCH_MIN_BYTES, 25)
    finally:
        consumer_fix.batch_fetches(0)
    assert asyncio.run(created()) == (1, 1500)  # faust's own


def test_workers_keep_no_standby_table_copies(tmp_path) -> None:
    """A takeover recovers its partitions from the changelogs, never from faust's standby copies:
    promoted standbys were found incomplete (tests/evidence/2026-11-27-long-zombie)."""
    from dataclasses import replace

    from peakroute.config import Settings
    from peakroute.streams.app import build_app

    settings = replace(Settings(), kafka_bootstrap="127.0.0.1:1", state_dir=str(tmp_path))
    assert build_app(settings).conf.table_standby_replicas == 0
