"""Faults, short form (issue 7): two workers under simulated peak load while something breaks —
a worker killed with SIGKILL three times (scenario 1), Redis killed and restarted (scenario 5) —
then `peakroute audit` must find nothing lost, nothing twice and nothing oversold."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from peakroute.connectors.kafka import make_producer
from peakroute.connectors.simulator import PeakSaleSimulator, run_simulation
from peakroute.connectors.stockload import generate_stock, produce_inventory
from peakroute.demo import committed, end_offsets
from peakroute.domain.catalog import load_catalog
from peakroute.domain.network import load_network
from peakroute.streams.topics import INVENTORY, ORDERS, RAW_TOPICS, STOCK_OPS, STOCK_REPLIES

from ..conftest import local_stack
from .harness import PeakrouteProcess, env_for, unique_app_id

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def wait_drained(settings, topics: list[str], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    lag = -1
    while time.monotonic() < deadline:
        ends = end_offsets(settings.kafka_bootstrap, topics)
        done = committed(settings.kafka_bootstrap, settings.app_id, list(ends))
        lag = sum(ends[tp] - done.get(tp, 0) for tp in ends)
        if lag == 0:
            return 0
        time.sleep(1)
    return lag


def drain_then_audit(settings) -> str:
    """Wait until the workers have caught up, then run `peakroute audit`; assert it is clean."""
    lag = wait_drained(settings, [*RAW_TOPICS, ORDERS, INVENTORY, STOCK_OPS, STOCK_REPLIES], timeout=240)
    assert lag == 0, f"workers did not catch up: lag {lag}"
    time.sleep(3)
    audit = subprocess.run([sys.executable, "-m", "peakroute", "audit"], env=env_for(settings),
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
    print(audit.stdout)
    assert audit.returncode == 0, audit.stdout[-5000:] + audit.stderr[-2000:]
    return audit.stdout


def test_kill9_a_worker_three_times_loses_nothing_and_oversells_nothing(tmp_path: Path) -> None:
    with local_stack(tmp_path / "stack") as base:
        settings = replace(base, app_id=unique_app_id("faults"))
        catalog, network = load_catalog(), load_network()
        producer = make_producer(settings)
        # Scarce stock for a few popular SKUs, so reservations really compete.
        produce_inventory(producer, generate_stock(catalog, network, units=300,
                                                   scarce={"SKU-LIPSTICK-07": 150, "SKU-EARBUD-W": 200}))
        workers = [PeakrouteProcess(settings, ["worker", "--metrics-port", "0"], tmp_path / f"w{i}.log")
                   for i in range(2)]
        sim = PeakSaleSimulator(rate=80, duration_s=24, seed=7, catalog=catalog, pay_timeout_s=8)
        stats: dict = {}
        t = threading.Thread(target=lambda: stats.update(s=run_simulation(sim, producer, realtime=True)))
        t.start()
        try:
            for n in range(3):
                time.sleep(6)
                victim = workers[0]
                victim.proc.send_signal(signal.SIGKILL)
                victim.proc.wait(10)
                victim.stop()
                workers[0] = PeakrouteProcess(settings, ["worker", "--metrics-port", "0"], tmp_path / f"w0-{n}.log")
            t.join(120)
            assert stats["s"].failed == 0
            audit = drain_then_audit(settings)
            assert "AUDIT OK" in audit
        finally:
            for w in workers:
                w.stop()


def test_redis_stopped_mid_stream_then_restarted_loses_and_oversells_nothing(tmp_path: Path) -> None:
    """Scenario 5 (first half): Redis goes away for 8 s under load.  Reservation never depends on
    Redis (the SKU owners' tables decide), so routing goes on planning blind; the breaker and the
    status projection degrade, and everything catches up once Redis is back."""
    import os

    from peakroute.stack import LocalStack
    from peakroute.streams.topics import topic_specs

    with local_stack(tmp_path / "stack") as base:
        settings = replace(base, app_id=unique_app_id("redisfault"))
        catalog, network = load_catalog(), load_network()
        producer = make_producer(settings)
        produce_inventory(producer, generate_stock(catalog, network, units=300, scarce={"SKU-LIPSTICK-07": 150}))
        workers = [PeakrouteProcess(settings, ["worker", "--metrics-port", "0"], tmp_path / f"w{i}.log")
                   for i in range(2)]
        sim = PeakSaleSimulator(rate=60, duration_s=20, seed=9, catalog=catalog, pay_timeout_s=8)
        stats: dict = {}
        t = threading.Thread(target=lambda: stats.update(s=run_simulation(sim, producer, realtime=True)))
        t.start()
        try:
            time.sleep(6)
            pid = int((Path(settings.state_dir) / "pids" / "redis.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
            time.sleep(8)
            LocalStack(settings).up(topic_specs(settings))  # starts only what is missing: redis
            t.join(120)
            assert stats["s"].failed == 0
            drain_then_audit(settings)
            for w in workers:
                assert w.alive(), w.output()[-3000:]
        finally:
            for w in workers:
                w.stop()

