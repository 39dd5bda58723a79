"""Table files kept through a clean stop (peakroute/tables/clean_stop.py) with the real parts: a real
Kafka, real worker processes stopped with SIGTERM, their RocksDB files.

A worker routes a backlog and stops cleanly; another worker, on another state dir, takes the
partitions and routes more (its writes land on the changelogs after the first worker's stop); the
first worker's state dir is then started again.  The restarted worker must keep its files, read
only the records written since its stop, and end with databases that hold exactly what the
changelogs say — checked record by record against the changelog topics after it, too, stops.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

import pytest

from peakroute.config import Settings
from peakroute.connectors.kafka import make_producer
from peakroute.connectors.simulator import PeakSaleSimulator, run_simulation
from peakroute.connectors.stockload import generate_stock, produce_inventory
from peakroute.demo import committed, end_offsets
from peakroute.domain.catalog import load_catalog
from peakroute.domain.network import load_network
from peakroute.streams.app import faust_datadir
from peakroute.streams.topics import INVENTORY, RAW_TOPICS, STOCK_OPS, STOCK_REPLIES, TABLES, changelog_topic
from peakroute.tables.clean_stop import MARKER, CleanStop, db_filename, topic_ids

from ..conftest import local_stack
from .harness import PeakrouteProcess, partition_records, unique_app_id

pytestmark = pytest.mark.integration

OFFSET_KEY = b"__faust\x00offset__"
RESTORED = re.compile(r"table restore: table (\S+): (\d+) record\(s\)")
INPUTS = [*RAW_TOPICS, INVENTORY, STOCK_OPS, STOCK_REPLIES]


def simulate(settings: Settings, orders: int, seed: int) -> None:
    catalog = load_catalog()
    producer = make_producer(settings)
    if seed == 1:
        produce_inventory(producer, generate_stock(catalog, load_network(), units=10**6))
    run_simulation(PeakSaleSimulator(rate=orders / 5, duration_s=5, seed=seed, catalog=catalog), producer,
                   realtime=False)


def drained(settings: Settings, worker: PeakrouteProcess, timeout: float = 240) -> None:
    """Wait until the worker's group has committed every input message (lag 0)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.alive(), worker.output()[-4000:]
        ends = end_offsets(settings.kafka_bootstrap, INPUTS)
        done = committed(settings.kafka_bootstrap, settings.app_id, list(ends))
        if all(done.get(tp, 0) >= end for tp, end in ends.items()):
            return
        time.sleep(1)
    raise AssertionError(f"not drained in {timeout} s: {worker.output()[-3000:]}")


def tables_dir(settings: Settings) -> Path:
    return Path(faust_datadir(settings)) / "tables"


def changelog_view(settings: Settings, table: str, partition: int, upto: int) -> dict[bytes, bytes]:
    """The table partition as its changelog says, up to offset ``upto``: each key's last value."""
    view: dict[bytes, bytes] = {}
    for msg in partition_records(settings, changelog_topic(settings.app_id, table), partition):
        if msg.offset() > upto:
            break
        if msg.value() is None:
            view.pop(msg.key(), None)
        else:
            view[msg.key()] = msg.value()
    return view


def run_until_drained(settings: Settings, log: Path) -> PeakrouteProcess:
    """A worker run until its group has committed every input message, then stopped (SIGTERM)."""
    worker = PeakrouteProcess(settings, ["worker", "--metrics-port", "0"], log)
    try:
        drained(settings, worker)
    finally:
        worker.stop()
    return worker


def test_a_cleanly_stopped_worker_restarts_from_its_files_and_reads_only_what_came_after(tmp_path: Path) -> None:
    import rocksdict

    with local_stack(tmp_path / "stack") as base:
        first = replace(base, app_id=unique_app_id("keep"), state_dir=str(tmp_path / "state-first"))
        other = replace(first, state_dir=str(tmp_path / "state-other"))
        simulate(first, 1500, seed=1)
        a = run_until_drained(first, tmp_path / "a.log")
        assert "table files kept for the next start" in a.output(), a.output()[-4000:]
        markers = list(tables_dir(first).glob(f"worker-*/{MARKER}"))
        assert len(markers) == 1, markers
        stop = CleanStop.from_json(markers[0].read_bytes())
        assert stop is not None and set(stop.tables) == set(TABLES), stop
        assert sum(len(p) for p in stop.tables.values()) == len(TABLES) * first.partitions, "all partitions kept"
        ids = topic_ids(first.kafka_bootstrap, [changelog_topic(first.app_id, t) for t in TABLES])
        assert stop.topic_ids == {t: ids[changelog_topic(first.app_id, t)] for t in TABLES}, "each changelog's id"

        # Another worker (its own state dir) takes the partitions and routes more: records after the stop.
        simulate(first, 800, seed=2)
        run_until_drained(other, tmp_path / "c.log")

        ends = end_offsets(first.kafka_bootstrap, [changelog_topic(first.app_id, t) for t in TABLES])
        since_stop = sum(ends[(changelog_topic(first.app_id, t), p)] - 1 - o
                         for t, parts in stop.tables.items() for p, o in parts.items())
        everything = sum(ends.values())
        assert 0 < since_stop < everything / 2, (since_stop, everything)

        again = PeakrouteProcess(first, ["worker", "--metrics-port", "0", "--loglevel", "info"], tmp_path / "a2.log")
        try:
            deadline = time.monotonic() + 120
            while "Recovery complete" not in again.output():
                assert again.alive() and time.monotonic() < deadline, again.output()[-4000:]
                time.sleep(0.5)
            log = again.output()
            assert "kept the table files of a cleanly stopped worker process" in log, log[-4000:]
            read = sum(int(n) for _, n in RESTORED.findall(log))
            assert read == since_stop, f"read {read} changelog records, {since_stop} were written since the stop"
        finally:
            again.stop()
        assert "Traceback" not in again.output(), again.output()[-4000:]

        # What the restarted worker's files hold is what the changelogs say, partition by partition.
        markers = list(tables_dir(first).glob(f"worker-*/{MARKER}"))
        assert len(markers) == 1, markers
        stop = CleanStop.from_json(markers[0].read_bytes())
        assert stop is not None and sum(len(p) for p in stop.tables.values()) == len(TABLES) * first.partitions
        compared = 0
        for table, parts in stop.tables.items():
            for partition, upto in parts.items():
                db = rocksdict.Rdict(str(markers[0].parent / db_filename(table, partition)),
                                     options=rocksdict.Options(raw_mode=True))
                try:
                    held = {k: v for k, v in db.items() if k != OFFSET_KEY}
                    assert db.get(OFFSET_KEY) is not None
                finally:
                    db.close()
                expected = changelog_view(first, table, partition, upto)
                assert held == expected, (table, partition, len(held), len(expected),
                                          sorted(set(held) ^ set(expected))[:5])
                compared += len(expected)
        assert compared > 1000, compared
