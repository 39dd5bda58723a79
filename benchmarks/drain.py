"""Drain benchmark: how fast one worker routes a backlog of realistic orders.

A fresh local stack (own ports, temp dir), a consistent initial stock, N orders of the simulator's
realistic mix written to the raw topics first, then one `peakroute worker` is started and timed
until every raw message and every internal message it caused is committed (consumer lag 0).

    python benchmarks/drain.py --orders 20000
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import local_stack  # noqa: E402

from peakroute.config import Settings  # noqa: E402
from peakroute.connectors.kafka import make_producer  # noqa: E402
from peakroute.connectors.simulator import PeakSaleSimulator, run_simulation  # noqa: E402
from peakroute.connectors.stockload import generate_stock, produce_inventory  # noqa: E402
from peakroute.demo import committed, end_offsets  # noqa: E402
from peakroute.domain.catalog import load_catalog  # noqa: E402
from peakroute.domain.network import load_network  # noqa: E402
from peakroute.streams.topics import (  # noqa: E402
    INVENTORY,
    ORDERS,
    RAW_TOPICS,
    STOCK_OPS,
    STOCK_REPLIES,
    TABLES,
    changelog_topic,
)


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the `finally`: never orphan a worker
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--worker-env", action="append", default=[], metavar="PEAKROUTE_X=V",
                    help="a worker setting for this run (repeatable), e.g. PEAKROUTE_TABLE_RESTORE=faust for an A/B")
    ap.add_argument("--join", action="store_true",
                    help="instead of the timed drain: one worker drains the backlog and stays, then a second "
                         "worker joins; time each worker's table recovery in that rebalance (the first one keeps "
                         "half its partitions, whose changelogs now hold its own writes)")
    ap.add_argument("--join-load", type=float, default=0.0, metavar="ORDERS_PER_S",
                    help="with --join: the simulator offers this many orders/s (open loop) from 5 s before the "
                         "second worker starts until both have recovered, so the rebalance happens under load")
    ap.add_argument("--restart", action="store_true",
                    help="after the drain, stop the worker (SIGTERM) and time a fresh one's table recovery on the "
                         "same state dir: it keeps the stopped worker's table files and reads only what came after "
                         "(add --worker-env PEAKROUTE_TABLE_KEEP=never for a restore from the changelogs' start, "
                         "what every takeover after a crash reads)")
    ap.add_argument("--compact-wait", type=float, default=0.0, metavar="S",
                    help="with --restart: wait this long after the drain for the broker's log cleaner before the "
                         "restart (a compressed day: with --changelog-segment-ms 5000, segments close during the drain)")
    ap.add_argument("--changelog-segment-ms", type=int, default=0, metavar="MS",
                    help="PEAKROUTE_CHANGELOG_SEGMENT_MS for the changelog topics and the workers (default: theirs)")
    args = ap.parse_args()
    if args.changelog_segment_ms:
        os.environ["PEAKROUTE_CHANGELOG_SEGMENT_MS"] = str(args.changelog_segment_ms)  # the stack's topics
        args.worker_env.append(f"PEAKROUTE_CHANGELOG_SEGMENT_MS={args.changelog_segment_ms}")  # a worker ensures them too
    with tempfile.TemporaryDirectory() as tmp, local_stack(Path(tmp) / "stack") as settings:
        from integration.harness import env_for

        env = env_for(settings, **dict(kv.split("=", 1) for kv in args.worker_env))
        catalog, network = load_catalog(), load_network()
        producer = make_producer(settings)
        produce_inventory(producer, generate_stock(catalog, network, units=10**6))
        sim = PeakSaleSimulator(rate=args.orders / 10, duration_s=10, seed=11, catalog=catalog)
        stats = run_simulation(sim, producer, realtime=False)
        raw = sum(end_offsets(settings.kafka_bootstrap, list(RAW_TOPICS)).values())
        print(f"backlog: {raw} raw payloads ({stats.by_kind})", flush=True)
        topics = [*RAW_TOPICS, INVENTORY, STOCK_OPS, STOCK_REPLIES]  # what the workers consume
        if "order-versions" in TABLES:  # a revision before the fused order stage (compare.py runs old
            topics.append(ORDERS)        # ones with this file): its fulfillment consumed peakroute.orders
        if args.join:
            time_join(settings, env, Path(tmp), topics, args.timeout, args.join_load, catalog)
            return
        drain(settings, env, raw, Path(tmp), topics, args.workers, args.timeout)
        if args.restart:
            if args.compact_wait:
                for table in TABLES:
                    n, keys, live = changelog_census(settings.kafka_bootstrap, changelog_topic(settings.app_id, table))
                    print(f"before compaction: {table}: {n} records, {keys} keys, {live} live", flush=True)
                print(f"waiting {args.compact_wait:.0f} s for the log cleaner", flush=True)
                time.sleep(args.compact_wait)
                if os.environ.get("DRAIN_SHOW_SEGMENTS"):  # the broker's files of one changelog partition
                    for d in sorted(Path(tmp).rglob(f"{changelog_topic(settings.app_id, 'order-routing')}-0")):
                        for f in sorted(d.iterdir()):
                            print(f"  {f.name} {f.stat().st_size}", flush=True)
                    for f in Path(tmp).rglob("log-cleaner.log"):
                        print(f.read_text()[-3000:], flush=True)
            time_recovery(settings, env, Path(tmp))


def drain(settings: Settings, env: dict[str, str], raw: int, tmp: Path, topics: list[str], n_workers: int = 1,
          timeout: float = 600) -> dict[str, float]:
    """Start ``n_workers`` workers on a stack whose raw topics hold ``raw`` payloads and time them until
    every consumed topic's lag is 0; prints progress and the result, and returns it (payloads/s incl.
    start-up, and after start-up with the worker CPU µs per payload when measured)."""
    t0 = time.monotonic()
    profile = os.environ.get("PEAKROUTE_BENCH_PYSPY")  # e.g. /tmp/prof.txt: profile worker 0 with py-spy
    prefix = [str(Path(sys.executable).with_name("py-spy")), "record", "-f", "raw", "-o", profile, "--"] \
        if profile else []
    workers = [subprocess.Popen([*(prefix if i == 0 else []), sys.executable, "-m", "peakroute", "worker",
                                 "--metrics-port", "0"], env=env,
                                stdout=open(tmp / f"w{i}.log", "wb"), stderr=subprocess.STDOUT)
               for i in range(n_workers)]
    import psutil

    def worker_cpu_s() -> float:
        """User + system CPU seconds of the workers so far (all their threads: librdkafka's,
        RocksDB's, faust's consumer thread)."""
        total = 0.0
        for w in workers:
            try:
                procs = [psutil.Process(w.pid)]
                procs += procs[0].children(recursive=True)  # under py-spy the worker is its child
                total += sum(p.cpu_times().user + p.cpu_times().system for p in procs)
            except psutil.Error:
                pass
        return total

    started: tuple[float, float] | None = None  # (time, worker CPU s) at the first committed progress
    result: dict[str, float] = {}
    try:
        while time.monotonic() - t0 < timeout:
            ends = end_offsets(settings.kafka_bootstrap, topics)
            done = committed(settings.kafka_bootstrap, settings.app_id, list(ends))
            lag = {t: 0 for t in topics}
            for tp in ends:
                lag[tp[0]] += ends[tp] - done.get(tp, 0)
            total = sum(lag.values())
            if started is None and sum(lag[t] for t in RAW_TOPICS) < raw:
                started = (time.monotonic(), worker_cpu_s())
            print(f"\r  t={time.monotonic() - t0:6.1f}s lag raw={sum(lag[t] for t in RAW_TOPICS):7d} "
                  f"ops={lag[STOCK_OPS]:6d} replies={lag[STOCK_REPLIES]:6d}",
                  end="", flush=True)
            if total == 0 and time.monotonic() - t0 > 3:
                break
            time.sleep(0.5)
        el = time.monotonic() - t0
        cpu = worker_cpu_s()
        print(f"\n{raw} raw payloads drained by {n_workers} worker(s) in {el:.1f} s "
              f"(incl. ~startup): {raw / el:.0f} payloads/s")
        result["payloads_s_incl_startup"] = raw / el
        if started is not None:
            # From the first committed progress: start-up (imports, joining, recovery) excluded.
            # CPU time per payload is the steadier figure on a noisy box (less hurt by waiting).
            print(f"after start-up: {raw / max(0.001, el - (started[0] - t0)):.0f} payloads/s, worker CPU "
                  f"{(cpu - started[1]) / raw * 1e6:.0f} µs per payload")
            result["payloads_s"] = raw / max(0.001, el - (started[0] - t0))
            result["cpu_us_per_payload"] = (cpu - started[1]) / raw * 1e6
    finally:
        stopping = time.monotonic()
        for w in workers:
            w.send_signal(__import__("signal").SIGINT if profile else __import__("signal").SIGTERM)
            w.wait()
        print(f"workers stopped (SIGTERM) in {time.monotonic() - stopping:.1f} s")
    # Re-reads the workers did (they cost drain time): records set aside during the start-up
    # rebalance, and records that reached an agent out of order (agents.common.InputOrder).
    logs = "".join((tmp / f"w{i}.log").read_text(errors="replace") for i in range(n_workers))
    print(f"worker re-reads: {logs.count('set aside, to be read again')} batch(es) set aside in a rebalance, "
          f"{logs.count('reached the agent before')} out-of-order arrival(s) set aside")
    return result


def time_join(settings: Settings, env: dict[str, str], tmp: Path, topics: list[str], timeout: float,
              load_rate: float = 0.0, catalog: object = None) -> None:
    """Worker A drains the backlog and keeps running; worker B joins.  Printed per worker: seconds
    from B's start to that worker's "Recovery complete" of the join's rebalance, from its
    ``_on_partitions_assigned`` to it (its partitions' standstill), and the records it restored in
    bulk (none with ``PEAKROUTE_TABLE_RESTORE=faust``).  ``load_rate``: orders/s offered meanwhile
    (from 5 s before B starts), so the consumers' fetches have records to return, as in a real
    scale-out."""
    import signal
    import threading

    stop_load = threading.Event()

    def offer_load() -> None:
        producer = make_producer(settings)
        sim = PeakSaleSimulator(rate=load_rate, duration_s=180, seed=13, catalog=catalog)
        run_simulation(sim, producer, realtime=True, sleep=lambda s: stop_load.wait(s) and sys.exit(0))

    def start(name: str) -> tuple[subprocess.Popen, Path]:
        log = tmp / f"join-{name}.log"
        return subprocess.Popen([sys.executable, "-m", "peakroute", "worker", "--metrics-port", "0", "--loglevel",
                                 "info"], env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT), log

    def marks(log: Path, pattern: str) -> list[float]:
        """Times (epoch s) of the log lines matching ``pattern``."""
        return [t for line in log.read_text(errors="replace").splitlines()
                if re.search(pattern, line) and (t := log_line_time(line))]

    a, log_a = start("a")
    b = None
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            ends = end_offsets(settings.kafka_bootstrap, topics)
            done = committed(settings.kafka_bootstrap, settings.app_id, list(ends))
            if sum(ends[tp] - done.get(tp, 0) for tp in ends) == 0 and marks(log_a, "Recovery complete"):
                break
            time.sleep(0.5)
        else:
            print(f"join: worker A did not drain the backlog within {timeout:.0f} s")
            return
        records = sum(end_offsets(settings.kafka_bootstrap, [changelog_topic(settings.app_id, t) for t in TABLES]).values())
        print(f"join: worker A drained the backlog in {time.monotonic() - t0:.1f} s; changelogs hold {records} records")
        load = None
        if load_rate:
            load = threading.Thread(target=offer_load, daemon=True)
            load.start()
            time.sleep(5)
            print(f"join: {load_rate:.0f} orders/s offered from 5 s before B starts", flush=True)
        joined_at = time.time()
        b, log_b = start("b")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (len(marks(log_a, "Recovery complete")) >= 2
                                                   and marks(log_b, "Recovery complete")):
            time.sleep(0.2)
        for name, log, nth in (("A (keeps half)", log_a, 1), ("B (joins)", log_b, 0)):
            done_at, assigned = marks(log, "Recovery complete"), marks(log, "Executing _on_partitions_assigned")
            if len(done_at) <= nth:
                print(f"join: worker {name}: no 'Recovery complete' within 300 s (log: {log})")
                continue
            assigned_at = max(t for t in assigned if t <= done_at[nth])
            bulk = [(int(n), float(sec)) for line in log.read_text(errors="replace").splitlines()
                    for n, sec in BULK_RESTORE_LINE.findall(line) if log_line_time(line) >= joined_at - 1]
            print(f"join: worker {name}: recovery complete {done_at[nth] - joined_at:.1f} s after B started, "
                  f"{done_at[nth] - assigned_at:.1f} s after its assignment; restored in bulk: "
                  f"{sum(x[0] for x in bulk)} records in {sum(x[1] for x in bulk):.2f} s")
    finally:
        stop_load.set()
        for w in (a, b):
            if w is not None:
                w.send_signal(signal.SIGTERM)
                w.wait()


#: A worker's summary line of one table's bulk restore (tables/store.Store._bulk_restore): records, seconds.
BULK_RESTORE_LINE = re.compile(r"table restore: table \S+: (\d+) record\(s\) from \d+ "
                               r"partition\(s\) in ([\d.]+) s")


def log_line_time(line: str) -> float:
    """Epoch seconds of a worker log line's timestamp (local time, as logging writes it; 0 if none)."""
    m = re.match(r"(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d)[,.](\d{3})", line)
    if not m:
        return 0.0
    return time.mktime(time.strptime(m.group(1).replace("T", " "), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000


def changelog_census(bootstrap: str, topic: str) -> tuple[int, int, int]:
    """(records, distinct keys, keys whose last record is not a tombstone) of a changelog topic, read
    from its start: how far compaction could shrink what a recovery reads."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"census-{os.getpid()}", "enable.auto.commit": False,
                  "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    last: dict[tuple[int, bytes], bool] = {}
    n, eof = 0, set()
    deadline = time.monotonic() + 120
    while len(eof) < len(parts) and time.monotonic() < deadline:
        for msg in c.consume(10_000, timeout=1.0):
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(msg.partition())
                continue
            n += 1
            last[(msg.partition(), msg.key())] = msg.value() is not None
    c.close()
    return n, len(last), sum(last.values())


def time_recovery(settings: Settings, env: dict[str, str], tmp: Path) -> None:
    """Start one worker on the drained stack and time its table recovery from faust's own log lines
    (``table restore: reading`` or ``Restoring state from changelog topics`` … ``Recovery complete``).
    ``DRAIN_RESTART_LOGLEVEL=debug`` runs that worker with debug logs (aiokafka's requests included)."""
    import shutil
    import signal

    def changelog(table: str) -> str:
        return changelog_topic(settings.app_id, table)

    ends = end_offsets(settings.kafka_bootstrap, [changelog(t) for t in TABLES])
    records = sum(ends.values())
    by_table = {t: sum(v for (topic, _), v in ends.items() if topic == changelog(t)) for t in TABLES}
    for table in TABLES:
        n, keys, live = changelog_census(settings.kafka_bootstrap, changelog(table))
        print(f"restart: {table}: {n} records, {keys} keys, {live} live (what full compaction would leave: "
              f"{live} records and, until delete.retention.ms, {keys - live} tombstones)", flush=True)
    log = tmp / "restart.log"
    t0 = time.monotonic()
    loglevel = os.environ.get("DRAIN_RESTART_LOGLEVEL", "info")
    w = subprocess.Popen([sys.executable, "-m", "peakroute", "worker", "--metrics-port", "0", "--loglevel", loglevel],
                         env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    marks: dict[str, float] = {}
    try:
        while time.monotonic() - t0 < 600 and "complete" not in marks:
            text = log.read_text(errors="replace")
            for name, pattern in (("restoring", r"table restore: reading|Restoring state from changelog"),
                                  ("complete", r"Recovery complete")):
                if name not in marks and re.search(pattern, text):
                    marks[name] = time.monotonic() - t0
            time.sleep(0.1)
    finally:
        w.send_signal(signal.SIGTERM)
        w.wait()
    kept = Path(tempfile.gettempdir()) / "peakroute-drain-restart.log"
    shutil.copy(log, kept)
    if "complete" not in marks:
        print(f"restart: no 'Recovery complete' within 600 s (the worker's log: {kept})")
        return
    text = kept.read_text(errors="replace")
    reading = marks["complete"] - marks.get("restoring", 0.0)
    if "kept the table files of a cleanly stopped worker process" in text:
        print(f"restart: the drain worker's table files were kept (clean stop, PEAKROUTE_TABLE_KEEP=clean-stop): "
              f"only the changelog records written since its stop are read, of {records} ({by_table}); recovery "
              f"complete {marks['complete']:.1f} s after the process started (the worker's log: {kept})")
    else:
        print(f"restart: {records} changelog records ({by_table}); recovery complete {marks['complete']:.1f} s after "
              f"the process started, {reading:.1f} s of it reading changelogs: {records / max(0.001, reading):.0f} "
              f"records/s (the worker's log: {kept})")
    bulk = [(int(n), float(sec)) for n, sec in BULK_RESTORE_LINE.findall(text)]
    if bulk:
        n, sec = sum(b[0] for b in bulk), sum(b[1] for b in bulk)
        print(f"restart: bulk restore (PEAKROUTE_TABLE_RESTORE=bulk) read {n} records in {sec:.2f} s: "
              f"{n / max(sec, 1e-6):.0f} records/s; faust's recovery did the rest")

if __name__ == "__main__":
    main()
