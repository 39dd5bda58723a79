"""Shared plumbing of the fault suite (issue 7): a real Kafka + Redis, worker processes under a
small supervisor, the simulator producing in real time, a lag monitor, and the closing audit with
a per-scenario report (orders in, outcomes, lost, duplicated reservations, oversold units,
recovery time).

Every scenario: start the stack and workers, seed stock (a few SKUs deliberately scarce so
reservations really compete), produce a simulated peak in a thread, inject the fault, let the
system recover, wait until the workers caught up, then ``peakroute audit`` must be clean and no
paid order may be left without an outcome.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from peakroute.config import Settings
from peakroute.connectors.kafka import make_producer
from peakroute.connectors.simulator import PeakSaleSimulator, run_simulation
from peakroute.connectors.stockload import generate_stock, produce_inventory
from peakroute.connectors.topicreader import read_all, read_messages
from peakroute.domain.audit import stuck_orders
from peakroute.domain.catalog import load_catalog
from peakroute.domain.network import load_network
from peakroute.streams.topics import INVENTORY, ORDER_EVENTS, ORDERS, RAW_TOPICS, STOCK_OPS, STOCK_REPLIES

from ..conftest import local_stack
from .harness import PeakrouteProcess, env_for, unique_app_id

ROOT = Path(__file__).resolve().parents[2]
INPUTS = [*RAW_TOPICS, INVENTORY, STOCK_OPS, STOCK_REPLIES]  # what the workers consume
#: Long forms of the scenarios (and the soak) run only with PEAKROUTE_SLOW_TESTS=1.
SLOW = os.environ.get("PEAKROUTE_SLOW_TESTS") == "1"
REPORT_FILE = ROOT / ".peakroute" / "fault-reports.txt"


def scale(short: float, long: float) -> float:
    """A duration (or rate) for the short form of a scenario, or for its long form."""
    return long if SLOW else short


class Worker:
    """One ``peakroute worker`` process; replaced by a new process when restarted."""

    def __init__(self, pool: WorkerPool, name: str) -> None:
        self.pool, self.name = pool, name
        self.generation = 0
        self.proc: PeakrouteProcess | None = None
        self.exits: list[int] = []
        self.wanted = False
        self.start()

    def start(self) -> None:
        log = self.pool.log_dir / f"{self.name}-{self.generation}.log"
        self.generation += 1
        # PEAKROUTE_FAULT_WORKER_LOGLEVEL=info: faust's rebalance, recovery and seek lines in the
        # kept worker logs (with PEAKROUTE_LOG_LEVEL=DEBUG: every fetch and agent batch), for a bug hunt.
        loglevel = os.environ.get("PEAKROUTE_FAULT_WORKER_LOGLEVEL", "warning")
        self.proc = PeakrouteProcess(self.pool.settings, ["worker", "--metrics-port", "0", "--loglevel", loglevel],
                                     log, **self.pool.env)
        self.wanted = True

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.proc.pid

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop for good (the supervisor does not restart it)."""
        self.wanted = False
        if self.proc is not None:
            self.proc.stop(sig)
            if self.proc.proc.returncode is not None:
                self.exits.append(self.proc.proc.returncode)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")
                         for p in sorted(self.pool.log_dir.glob(f"{self.name}-*.log")))


class WorkerPool:
    """Worker processes plus a supervisor thread that restarts any that exits on its own, as
    compose ``restart: unless-stopped`` or systemd would (``die()`` exits with code 70 by design)."""

    def __init__(self, settings: Settings, log_dir: Path, **env: str) -> None:
        self.settings, self.log_dir, self.env = settings, log_dir, {"PYTHONUNBUFFERED": "1", **env}
        log_dir.mkdir(parents=True, exist_ok=True)
        self.workers: list[Worker] = []
        self.restarts: list[tuple[str, int]] = []  # (worker, exit code) of unplanned exits
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, daemon=True)
        self._thread.start()

    def add(self) -> Worker:
        with self._lock:
            w = Worker(self, f"w{len(self.workers)}")
            self.workers.append(w)
            return w

    def _supervise(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                for w in self.workers:
                    if w.wanted and w.proc is not None and not w.alive():
                        code = w.proc.proc.returncode
                        w.exits.append(code)
                        self.restarts.append((w.name, code))
                        w.proc.stop()
                        time.sleep(1.0)  # a supervisor's restart delay
                        w.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for w in self.workers:
            w.stop()

    def alive(self) -> list[Worker]:
        return [w for w in self.workers if w.alive()]


class LagMonitor:
    """Samples the group's consumer lag over every input topic every ``every`` s (None while Kafka
    does not answer), so a report can say how long the workers took to catch up after a fault."""

    def __init__(self, settings: Settings, every: float = 2.0) -> None:
        self.settings, self.every = settings, every
        self.samples: list[tuple[float, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def lag(self, consumer: Consumer) -> int:
        tps = [TopicPartition(t, p) for t in INPUTS for p in range(self.settings.partitions)]
        done = {(tp.topic, tp.partition): max(tp.offset, 0) for tp in consumer.committed(tps, timeout=5)}
        total = 0
        for tp in tps:
            _, hi = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
            total += max(0, hi - done[(tp.topic, tp.partition)])
        return total

    def _run(self) -> None:
        c = Consumer({"bootstrap.servers": self.settings.kafka_bootstrap, "group.id": self.settings.app_id,
                      "enable.auto.commit": False, "logger": _quiet_logger()})
        try:
            while not self._stop.wait(self.every):
                try:
                    value: int | None = self.lag(c)
                except KafkaException:
                    value = None
                self.samples.append((time.monotonic(), value))
        finally:
            c.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def peak(self, since: float = 0.0) -> int:
        return max((v for t, v in self.samples if v is not None and t >= since), default=0)

    def recovered_at(self, since: float, threshold: int) -> float | None:
        """First time at or after ``since`` when the lag was back at or under ``threshold``."""
        for t, v in self.samples:
            if t >= since and v is not None and v <= threshold:
                return t
        return None


def _quiet_logger():  # noqa: ANN202 - librdkafka logs refused connections while Kafka is down
    import logging

    quiet = logging.getLogger("tests.faults.librdkafka")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    return quiet


@dataclass
class Load:
    """The simulator producing a peak in real time, in a thread."""

    settings: Settings
    rate: float
    duration_s: float
    seed: int = 7
    surge: str | None = None
    stats: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from peakroute.connectors.simulator import parse_surge

        self.producer = make_producer(self.settings)
        kwargs = {"surge": parse_surge(self.surge)} if self.surge else {}
        self.sim = PeakSaleSimulator(rate=self.rate, duration_s=self.duration_s, seed=self.seed,
                                     catalog=load_catalog(), pay_timeout_s=8, **kwargs)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()
        self.thread.start()

    def _run(self) -> None:
        self.stats["s"] = run_simulation(self.sim, self.producer, realtime=True, flush_timeout_s=120)

    def join(self) -> None:
        self.thread.join(self.duration_s + 180)
        assert "s" in self.stats, "the simulator did not finish"
        s = self.stats["s"]
        assert s.failed == 0, f"the simulator's producer failed {s.failed} of {s.events} deliveries"
        self.ended = time.monotonic()


@dataclass
class Scenario:
    """One fault scenario's stack, workers, load and measurements."""

    name: str
    settings: Settings
    tmp: Path
    pool: WorkerPool
    monitor: LagMonitor
    fault_ended: float | None = None
    facts: list[str] = field(default_factory=list)

    def fault_over(self) -> None:
        self.fault_ended = time.monotonic()

    def wait_processing(self, timeout: float = 90.0) -> None:
        """Until work is committed on the raw topics and every worker is a member of the settled
        group (started, assigned, routing): a fault injected into a worker still starting up tests
        less than it says (the SIGSTOP scenario once froze a worker that had not joined yet)."""
        from confluent_kafka import ConsumerGroupState
        from confluent_kafka.admin import AdminClient

        from peakroute.demo import committed

        deadline = time.monotonic() + timeout
        tps = [(t, p) for t in RAW_TOPICS for p in range(self.settings.partitions)]
        admin = AdminClient({"bootstrap.servers": self.settings.kafka_bootstrap})
        while time.monotonic() < deadline:
            try:
                if sum(committed(self.settings.kafka_bootstrap, self.settings.app_id, tps).values()) > 0:
                    group = admin.describe_consumer_groups([self.settings.app_id])[self.settings.app_id].result(10)
                    if group.state == ConsumerGroupState.STABLE and len(group.members) >= len(self.pool.workers):
                        return
            except KafkaException:
                pass
            time.sleep(1)
        raise AssertionError("the workers never all started processing")

    def note(self, fact: str) -> None:
        self.facts.append(fact)
        print(f"[{self.name}] {fact}", flush=True)


@contextmanager
def scenario(name: str, tmp: Path, workers: int = 2, units: int = 300, **env: str) -> Iterator[Scenario]:
    """A fresh stack with stock seeded and ``workers`` worker processes under the supervisor."""
    with local_stack(tmp / "stack") as base:
        settings = replace(base, app_id=unique_app_id(name))
        catalog, network = load_catalog(), load_network()
        producer = make_producer(settings)
        produce_inventory(producer, generate_stock(catalog, network, units=units,
                                                   scarce={"SKU-LIPSTICK-07": 150, "SKU-EARBUD-W": 200}))
        passed = {k: os.environ[k] for k in ("PEAKROUTE_EVENT_LOOP", "PEAKROUTE_LOG_LEVEL") if k in os.environ}
        pool = WorkerPool(settings, tmp / "logs", **{**passed, **env})
        monitor = LagMonitor(settings)
        sc = Scenario(name, settings, tmp, pool, monitor)
        for _ in range(workers):
            pool.add()
        try:
            yield sc
        except BaseException:
            for w in pool.workers:
                print(f"----- {w.name} (last 4000 chars) -----\n{w.logs()[-4000:]}")
            keep = Path("/tmp/peakroute-fault-evidence") / f"{name}-{time.strftime('%H%M%S')}"
            shutil.copytree(tmp / "logs", keep, dirs_exist_ok=True)
            print(f"worker logs kept in {keep}")
            raise
        finally:
            monitor.close()
            pool.close()
            _remove_datadir(settings)


def _remove_datadir(settings: Settings) -> None:
    from peakroute.streams.app import faust_datadir

    shutil.rmtree(faust_datadir(settings), ignore_errors=True)


def wait_drained(settings: Settings, timeout: float) -> int:
    from peakroute.demo import committed, end_offsets

    deadline = time.monotonic() + timeout
    lag = -1
    while time.monotonic() < deadline:
        try:
            ends = end_offsets(settings.kafka_bootstrap, INPUTS)
            done = committed(settings.kafka_bootstrap, settings.app_id, list(ends))
            lag = sum(ends[tp] - done.get(tp, 0) for tp in ends)
        except KafkaException:
            lag = -1
        if lag == 0:
            return 0
        time.sleep(1)
    return lag


def run_audit(settings: Settings) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-m", "peakroute", "audit"], env=env_for(settings),
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    return out.returncode, out.stdout + out.stderr[-2000:]


def find_stuck(settings: Settings) -> list[str]:
    from peakroute.connectors.topicreader import read_json_objects

    def docs(topic: str) -> list[dict]:
        return read_json_objects(settings.kafka_bootstrap, [topic])

    return stuck_orders(docs(ORDERS), docs(ORDER_EVENTS))


def explain_stuck(sc: Scenario, oids: list[str]) -> str:
    """Everything the topics and the worker logs say about some stuck orders (for the bug hunt)."""
    from peakroute.streams.topics import DLQ

    want = set(oids)
    out = []
    for topic in (ORDERS, ORDER_EVENTS, STOCK_OPS, STOCK_REPLIES, DLQ):
        for t, p, o, _k, value in read_all(sc.settings.kafka_bootstrap, [topic]):
            text = (value or b"").decode(errors="replace")
            for oid in want:
                if oid in text:
                    doc = orjson.loads(value) if topic in (ORDERS, ORDER_EVENTS) else None
                    if topic == ORDERS and doc is not None:
                        text = f"status={doc.get('status')} updated_at={doc.get('updated_at')}"
                    elif topic in (STOCK_OPS, STOCK_REPLIES):
                        items = orjson.loads(value).get("ops" if topic == STOCK_OPS else "replies", [])
                        text = str([i for i in items if i.get("order_id") == oid])
                    out.append(f"{oid} {t}[{p}]@{o}: {text[:600]}")
    for w in sc.pool.workers:
        for line in w.logs().splitlines():
            if any(oid in line for oid in want) or "Assigned" in line or "revoked" in line.lower() \
                    or "frozen" in line or "plumbing" in line:
                out.append(f"{w.name}: {line[:400]}")
    return "----- stuck orders -----\n" + "\n".join(out[:400])


def dump_for_oversell(sc: Scenario, audit_text: str) -> None:
    """For every oversold SKU in the audit: every record mentioning it on the stock, fulfillment
    and inventory topics, and every event of the orders involved (kept with the worker logs)."""
    from peakroute.domain.network import load_network
    from peakroute.streams.topics import fulfillment_topic

    skus = set(re.findall(r"oversold: (\S+) @", audit_text))
    if not skus:
        return
    topics = [STOCK_OPS, STOCK_REPLIES, INVENTORY] + [fulfillment_topic(w.code) for w in load_network().warehouses]
    out, orders = [], set()
    for t, p, o, _k, value in read_all(sc.settings.kafka_bootstrap, topics):
        text = (value or b"").decode(errors="replace")
        if any(sku in text for sku in skus):
            out.append(f"{t}[{p}]@{o}: {text}")
            orders.update(re.findall(r'"order_id":"([^"]+)"', text))
    for t, p, o, _k, value in read_all(sc.settings.kafka_bootstrap, [ORDER_EVENTS, ORDERS]):
        text = (value or b"").decode(errors="replace")
        m = re.search(r'"order_id":"([^"]+)"', text)
        if m and m.group(1) in orders:
            out.append(f"{t}[{p}]@{o}: {text[:1500]}")
    (sc.tmp / "logs" / "oversold.txt").write_text("\n".join(out))


@dataclass
class Report:
    name: str
    raw: int
    dead_lettered: int
    orders: int
    outcomes: str
    lost: int
    twice: int
    oversold_units: int
    stuck: int
    healed_by_watchdog: int
    recovery_s: float | None
    peak_lag: int
    drain_s: float
    restarts: list[tuple[str, int]]
    facts: list[str]
    audit: str

    def render(self) -> str:
        rec = f"{self.recovery_s:.1f} s" if self.recovery_s is not None else "n/a"
        lines = [
            f"=== fault scenario: {self.name} ===",
            f"orders in: {self.raw:,} raw payloads -> {self.orders:,} orders, {self.dead_lettered:,} dead-lettered",
            f"outcomes: {self.outcomes}",
            f"lost {self.lost}; duplicated reservations {self.twice}; oversold units {self.oversold_units}; "
            f"paid orders without an outcome {self.stuck} (healed by the retry watchdog: {self.healed_by_watchdog})",
            f"recovery: lag back to normal {rec} after the fault ended (peak lag {self.peak_lag:,}); "
            f"caught up {self.drain_s:.1f} s after the load ended",
            "unplanned worker exits (restarted by the supervisor): "
            + (", ".join(f"{w} exit {c}" for w, c in self.restarts) or "none"),
        ]
        lines += [f"  - {f}" for f in self.facts]
        return "\n".join(lines)


def _count(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text, flags=re.M))


def parse_audit(text: str) -> dict:
    m = re.search(r"raw payloads ([\d,]+); dead-lettered ([\d,]+); orders ([\d,]+)", text)
    raw, dlq, orders = (int(x.replace(",", "")) for x in m.groups()) if m else (0, 0, 0)
    outcomes = re.search(r"^outcomes: (.*)$", text, flags=re.M)
    oversold = sum(int(a) - int(b) for a, b in re.findall(r"oversold: .*?: (\d+) promised > (-?\d+) sellable", text))
    return {"raw": raw, "dead_lettered": dlq, "orders": orders, "outcomes": outcomes.group(1) if outcomes else "",
            "lost": _count(r"✗ lost:", text), "twice": _count(r"✗ twice:", text), "oversold_units": oversold}


def late_records(settings: Settings, late_s: float = 3.0) -> tuple[int, dict[str, int], list[str]]:
    """Records a worker produced and Kafka got much later than records produced after them on the
    same partition: a frozen worker's queued records, sent by librdkafka when it woke up — after the
    group had given its partitions to another worker (a zombie's writes).  Returns (records read,
    late records by topic, up to 10 examples).  Only topics whose records are stamped at produce
    time (changelogs, stock ops and replies, shipment requests, order events; not the raw topics,
    which keep the channel's time)."""
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "late-records"})
    try:
        md = c.list_topics(timeout=10)
    finally:
        c.close()
    topics = sorted(t for t in md.topics if t.endswith("-changelog") or t.startswith("peakroute.fulfillment.")
                    or t in (STOCK_OPS, STOCK_REPLIES, ORDER_EVENTS))
    newest: dict[tuple[str, int], int] = {}
    late: dict[str, int] = {}
    examples: list[str] = []
    n = 0
    for msg in read_messages(settings.kafka_bootstrap, topics):
        n += 1
        tp = (msg.topic(), msg.partition())
        ts = msg.timestamp()[1]
        if ts <= 0:
            continue
        if ts < newest.get(tp, ts) - late_s * 1000:
            late[tp[0]] = late.get(tp[0], 0) + 1
            if len(examples) < 10:
                examples.append(f"{tp[0]}[{tp[1]}]@{msg.offset()} key {msg.key()!r:.60} produced "
                                f"{(newest[tp] - ts) / 1000:.1f} s before the newest record ahead of it")
        newest[tp] = max(ts, newest.get(tp, ts))
    return n, late, examples


def finish(sc: Scenario, load: Load | None, *, threshold: int | None = None, drain_timeout: float = 180) -> Report:
    """Wait for the load to end and the workers to catch up, audit, print and return the report;
    fails the test when anything was lost, done twice, oversold, or left without an outcome."""
    if load is not None:
        load.join()
    load_end = getattr(load, "ended", time.monotonic())
    lag = wait_drained(sc.settings, drain_timeout)
    drained = time.monotonic()
    if lag != 0:
        from peakroute.demo import committed, end_offsets

        ends = end_offsets(sc.settings.kafka_bootstrap, INPUTS)
        done = committed(sc.settings.kafka_bootstrap, sc.settings.app_id, list(ends))
        behind = {f"{t}[{p}]": ends[(t, p)] - done.get((t, p), 0) for t, p in ends if ends[(t, p)] != done.get((t, p), 0)}
        (sc.tmp / "logs" / "lag.txt").write_text(repr(behind))
        raise AssertionError(f"workers did not catch up: lag {lag}: {behind}")
    time.sleep(3)
    code, text = run_audit(sc.settings)
    stuck = find_stuck(sc.settings)
    first_stuck = len(stuck)
    deadline = time.monotonic() + 60
    while stuck and time.monotonic() < deadline:  # the retry watchdog asks again after 20 s
        time.sleep(5)
        wait_drained(sc.settings, 60)
        stuck = find_stuck(sc.settings)
    if first_stuck:
        code, text = run_audit(sc.settings)
    sc.monitor.close()
    rate = load.rate if load is not None else 50
    threshold = threshold if threshold is not None else int(max(100, 3 * rate))
    since = sc.fault_ended or 0.0
    rec_at = sc.monitor.recovered_at(since, threshold) if sc.fault_ended else None
    parsed = parse_audit(text)
    aside = [int(m.group(1)) for w in sc.pool.workers
             for m in re.finditer(r"(\d+) message\(s\) set aside", w.logs())]
    if aside:  # agents.common.owned_events: handed over during a rebalance, read again after its seek
        sc.facts.append(f"messages set aside during rebalances (read again after the seek): {sum(aside):,} "
                        f"in {len(aside)} batches")
    left_out = [int(m.group(1)) for w in sc.pool.workers
                for m in re.finditer(r"(\d+) changelog record\(s\) left out of recovery", w.logs())]
    if left_out:  # tables/stale.py: a replaced owner's late writes, not taken by a later recovery
        sc.facts.append(f"late changelog records left out by recoveries: {sum(left_out):,}")
    try:
        read, late, examples = late_records(sc.settings)
        sc.facts.append(f"records Kafka got ≥ 3 s after records produced later on their partition (a frozen "
                        f"worker's queued sends): {sum(late.values()):,} of {read:,} {late or ''}")
        sc.facts += [f"    late: {e}" for e in examples]
    except Exception as exc:  # noqa: BLE001 - a diagnostic: never the reason a scenario fails
        sc.facts.append(f"late records not counted: {exc!r}")
    report = Report(name=sc.name, **parsed, stuck=len(stuck), healed_by_watchdog=first_stuck - len(stuck),
                    recovery_s=(rec_at - since) if rec_at is not None else None,
                    peak_lag=sc.monitor.peak(), drain_s=drained - load_end, restarts=list(sc.pool.restarts),
                    facts=sc.facts, audit=text)
    rendered = report.render()
    print("\n" + rendered + "\n--- audit ---\n" + text, flush=True)
    try:
        REPORT_FILE.parent.mkdir(parents=True, exist_ok=True)
        with open(REPORT_FILE, "a") as f:
            f.write(time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()) + ("long" if SLOW else "short")
                    + "\n" + rendered + "\n\n")
    except OSError:
        pass
    if code != 0:
        dump_for_oversell(sc, text)
    if stuck:
        why = explain_stuck(sc, stuck[:5])
        print(why, flush=True)
        (sc.tmp / "logs" / "stuck.txt").write_text(why)
    assert code == 0, text[-5000:]
    assert "AUDIT OK" in text
    assert not stuck, f"{len(stuck)} paid orders never got an outcome: {stuck[:20]}"
    return report


def new_id() -> str:
    return uuid.uuid4().hex[:8]
