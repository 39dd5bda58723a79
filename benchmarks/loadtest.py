"""Open-loop load test (issue 6): latency at fixed offered rates, the raw-Kafka ceiling, scale-out,
the hot-SKU run and a memory soak — one command, results as Markdown + JSON.

    python benchmarks/loadtest.py                       # the full run (about 20-30 min)
    python benchmarks/loadtest.py --smoke               # a few seconds per part, so it cannot rot
    python benchmarks/loadtest.py --workers 1 --rates 100,200,300 --no-hot --soak-min 0

How it measures (see benchmarks/RESULTS.md for the results and their reading):

* **Open loop.**  The simulator's realistic mix (four channel formats, 1–5 lines, Zipf SKUs,
  re-sends, unpaid orders, cancels) is generated *before* a step starts; each payload then goes
  out at its scheduled time, whatever the consumers do.  Its Kafka timestamp is set to that
  *intended* time, so a producer that falls behind adds to the measured latency instead of hiding
  it (coordinated omission).
* **End-to-end latency** of an order = Kafka timestamp of its first ``shipment_request`` on a
  ``peakroute.fulfillment.<warehouse>`` topic − the intended time of the latest non-re-send payload
  of that order sent before it (the payment, for an order that was created unpaid).  Recorded in
  an HdrHistogram (1 ms … 10 min, 3 significant digits).
* **Sustained** at a rate = every routable order of the step got its request within
  ``--grace`` seconds after the step's last payload was due.  The max sustained rate is the
  highest sustained step.
* **Ceiling** = a raw confluent-kafka consume→produce passthrough (one process, like one worker)
  over the same broker, the same partition count and the same payload bytes, measured in the same
  run.
* **Scale-out** = the same rate steps with 1, 2, 3 ``peakroute worker`` processes sharing the
  partitions, each on a fresh stack.
* **Hot SKU** = one SKU in ~30% of the orders with stock for only part of them; measured at the
  same rates, then ``peakroute audit`` must find zero oversold units.
* **Soak** = ``--soak-min`` minutes at half the max sustained rate (or ``--soak-rate``); worker RSS
  and CPU sampled every 10 s, latency reported per minute too.
* **Warm-up** = ``--warm-s`` seconds at the first rate before the first measured step, not
  reported: a fresh broker's JIT compiler takes 30-50% of a core for a minute or two.
* **Pinned** (``--pin-workers 1``) = the workers (and the ceiling's passthrough) on the CPUs named,
  the broker, Redis, the load generator and the collector on the others: a worker with a core of
  its own, the per-core figure a capacity model needs.  Each step records every CPU's busy %.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import orjson  # noqa: E402
import psutil  # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from hdrh.histogram import HdrHistogram  # noqa: E402

from peakroute.config import Settings  # noqa: E402
from peakroute.connectors.simulator import PeakSaleSimulator, SimEvent, SurgeSpec  # noqa: E402
from peakroute.connectors.stockload import generate_stock, produce_inventory  # noqa: E402
from peakroute.demo import committed, end_offsets  # noqa: E402
from peakroute.domain.catalog import Catalog, load_catalog  # noqa: E402
from peakroute.domain.network import load_network  # noqa: E402
from peakroute.streams.topics import (  # noqa: E402
    INVENTORY,
    ORDER_EVENTS,
    RAW_TOPICS,
    STOCK_OPS,
    STOCK_REPLIES,
    fulfillment_topic,
    raw_topic,
)

PIPELINE_TOPICS = [*RAW_TOPICS, INVENTORY, STOCK_OPS, STOCK_REPLIES]  # what the workers consume
HOT_SKU = "SKU-LIPSTICK-07"
#: Order events that end an order's routing (it was sent to warehouses, or there was no stock).
OUTCOMES = ("routed", "split", "backordered")


# ------------------------------------------------------------------------------------------------
# Workload
# ------------------------------------------------------------------------------------------------

@dataclass
class Workload:
    """A step's payloads, generated up front, and each order's intended send times."""

    events: list[SimEvent]
    new_orders: int
    sent_at: dict[str, list[float]] = field(default_factory=dict)  # order_id -> intended epochs (non-re-sends)


def hot_surge(catalog: Catalog, share: float, seed: int) -> SurgeSpec:
    """A 'surge' over the whole run that puts HOT_SKU in about ``share`` of the orders (found by
    bisection on a sample, since orders have 1-5 lines)."""
    lo, hi = 1.0, 10_000.0
    for _ in range(18):
        mid = (lo * hi) ** 0.5
        spec = SurgeSpec(channel="tmall", factor=1.0, start_s=0.0, duration_s=1e9, sku=HOT_SKU, sku_factor=mid)
        sim = PeakSaleSimulator(rate=2000, duration_s=1.0, seed=seed, catalog=catalog, surge=spec)
        news = [e for e in sim.events() if e.kind == "new"]
        got = sum(1 for e in news if e.order and any(ln.sku == HOT_SKU for ln in e.order.lines)) / max(1, len(news))
        lo, hi = (mid, hi) if got < share else (lo, mid)
    return SurgeSpec(channel="tmall", factor=1.0, start_s=0.0, duration_s=1e9, sku=HOT_SKU, sku_factor=(lo * hi) ** 0.5)


def workload(catalog: Catalog, rate: float, seconds: float, seed: int, surge: SurgeSpec | None) -> Workload:
    # Payment timeout beyond the step: unpaid orders that never pay stay unrouted instead of being
    # expired mid-measurement (they are not counted as routable).
    sim = PeakSaleSimulator(rate=rate, duration_s=seconds, seed=seed, catalog=catalog, surge=surge,
                            start_epoch=time.time(), pay_timeout_s=3600)
    events = list(sim.events())
    return Workload(events, sum(1 for e in events if e.kind == "new"))


def produce_open_loop(producer: Producer, wl: Workload, t0: float) -> float:
    """Send every payload at ``t0 + at`` (epoch seconds), stamped with that intended time; return
    how far behind schedule the producer ever fell (seconds)."""
    topics = {ch: raw_topic(ch) for ch in ("tmall", "jd", "douyin", "wxmini")}
    behind = 0.0
    failed: list[Any] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err)

    for n, ev in enumerate(wl.events):
        due = t0 + ev.at
        now = time.time()
        while due - now > 0.0005:
            producer.poll(0)
            time.sleep(min(due - now, 0.05))
            now = time.time()
        behind = max(behind, now - due)
        if ev.kind != "resend":
            wl.sent_at.setdefault(f"{ev.channel}:{ev.key}", []).append(due)
        while True:
            try:
                producer.produce(topics[ev.channel], key=ev.key, value=ev.payload, timestamp=int(due * 1000),
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        if n % 100 == 0:
            producer.poll(0)
    producer.flush(60)
    if failed:
        raise RuntimeError(f"{len(failed)} payloads not delivered, e.g. {failed[0]}")
    return behind


# ------------------------------------------------------------------------------------------------
# Observing the warehouse topics
# ------------------------------------------------------------------------------------------------

class RequestCollector(threading.Thread):
    """Reads every warehouse topic and ``peakroute.order-events`` from 'now' on and remembers, per
    order, the Kafka timestamp of its first shipment request and of its first routing outcome
    (routed, split or backordered: the order is done either way)."""

    def __init__(self, bootstrap: str, warehouses: list[str], partitions: int) -> None:
        super().__init__(daemon=True)
        self.first: dict[str, float] = {}
        self.seen: dict[str, float] = {}  # order_id -> when this process read its first request (local clock)
        self.done: dict[str, tuple[str, float]] = {}
        self._halt = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{os.getpid()}-{time.time()}",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 20})
        tps = [TopicPartition(t, p) for t in [*map(fulfillment_topic, warehouses), ORDER_EVENTS]
               for p in range(partitions)]
        for tp in tps:
            tp.offset = self._consumer.get_watermark_offsets(tp, timeout=10)[1]
        self._consumer.assign(tps)
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._halt.is_set():
            for msg in self._consumer.consume(1000, 0.1):
                if msg.error() or not msg.value():
                    continue
                doc = orjson.loads(msg.value())
                ts = msg.timestamp()[1] / 1000.0
                oid = doc.get("order_id")
                with self._lock:
                    if doc.get("type") == "shipment_request":
                        if oid not in self.first or ts < self.first[oid]:
                            self.first[oid] = ts
                        self.seen.setdefault(oid, time.time())
                    elif doc.get("event") in OUTCOMES and oid not in self.done:
                        self.done[oid] = (doc["event"], ts)
        self._consumer.close()

    def routed(self, order_ids: set[str]) -> dict[str, float]:
        with self._lock:
            return {o: self.first[o] for o in order_ids if o in self.first}

    def seen_at(self, order_ids: set[str]) -> dict[str, float]:
        """When this reader saw each order's first shipment request (local clock)."""
        with self._lock:
            return {o: self.seen[o] for o in order_ids if o in self.seen}

    def finished(self, order_ids: set[str]) -> dict[str, tuple[str, float]]:
        with self._lock:
            return {o: self.done[o] for o in order_ids if o in self.done}

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


# ------------------------------------------------------------------------------------------------
# One step
# ------------------------------------------------------------------------------------------------

@dataclass
class Step:
    label: str
    workers: int
    offered_orders_s: float
    seconds: float
    new_orders: int
    payloads: int
    routed: int
    backordered: int
    routable: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    producer_behind_ms: float
    drained_after_s: float
    sustained: bool
    done_per_s: float
    load1: float = 0.0  #: the machine's 1-minute load average at the end of the step (noise indicator)
    worker_restarts: int = 0  #: workers that exited during the step and were restarted (a supervisor's job)
    #: steps of two minutes or more: [p50, p99] ms of the orders whose reference payload was due in each minute
    by_minute_ms: list[list[float]] = field(default_factory=list)
    #: each CPU's busy % while the step's payloads went out (which side saturates, when pinned)
    cpu_pct: list[float] = field(default_factory=list)
    #: CPU % (of one core) by process kind over the same time: workers, kafka, redis, load generator
    proc_cpu_pct: dict[str, float] = field(default_factory=dict)


def routable_orders(wl: Workload) -> set[str]:
    """Orders that must get a shipment request: the last state the channel sent is paid (or a
    paid order's address change); cancelled and still-unpaid orders are not routed."""
    last: dict[str, str] = {}
    for ev in wl.events:
        last[f"{ev.channel}:{ev.key}"] = ev.status
    return {o for o, status in last.items() if status == "paid"}


def run_step(label: str, workers: int, producer: Producer, collector: RequestCollector, wl: Workload,
             rate: float, seconds: float, grace: float) -> Step:
    t0 = time.time() + 0.5
    psutil.cpu_percent(percpu=True)  # starts the interval the next call measures
    before, started = process_cpu(), time.monotonic()
    behind = produce_open_loop(producer, wl, t0)
    cpu_pct = psutil.cpu_percent(percpu=True)
    after, took = process_cpu(), time.monotonic() - started
    proc_cpu_pct = {kind: round((after.get(kind, 0.0) - before.get(kind, 0.0)) / took * 100, 1)
                    for kind in sorted(after)}
    end = t0 + seconds
    want = routable_orders(wl)

    def wait(until: float) -> dict[str, tuple[str, float]]:
        while time.time() < until and len(collector.finished(want)) < len(want):
            time.sleep(0.2)
        return collector.finished(want)

    done = wait(end + grace)
    if len(done) < len(want):  # not sustained; see how far behind it was (up to 4 grace periods)
        done = wait(end + 4 * grace)
    last_done = max((ts for _, ts in done.values()), default=end)
    drained_after = max(0.0, last_done - end) if len(done) == len(want) else time.time() - end
    routed = collector.routed(want)
    hist = HdrHistogram(1, 600_000, 3)
    minutes = [HdrHistogram(1, 600_000, 3) for _ in range(int(seconds // 60) + 1)] if seconds >= 120 else []
    for oid, ts in routed.items():
        sent = wl.sent_at.get(oid, [])
        i = bisect.bisect_right(sent, ts) - 1
        ref = sent[max(i, 0)] if sent else ts
        hist.record_value(max(1, int((ts - ref) * 1000)))
        if minutes:  # does latency drift over a long step?
            minutes[min(len(minutes) - 1, max(0, int((ref - t0) // 60)))].record_value(max(1, int((ts - ref) * 1000)))
    # Orders still without an outcome count at the longest latency they could have so far
    # (coordinated omission: missing is not fast).
    missing = len(want) - len(done)
    if missing:
        hist.record_value(min(int((time.time() - t0) * 1000), 600_000), missing)
    sustained = len(done) == len(want) and drained_after <= grace
    backordered = sum(1 for kind, _ in done.values() if kind == "backordered")
    first = min((ts for _, ts in done.values()), default=t0)
    return Step(label, workers, rate, seconds, wl.new_orders, len(wl.events), len(routed), backordered, len(want),
                hist.get_value_at_percentile(50), hist.get_value_at_percentile(99),
                hist.get_value_at_percentile(99.9), hist.get_max_value(), round(behind * 1000, 1),
                round(drained_after, 2), sustained, round(len(done) / max(0.001, last_done - min(first, t0)), 1),
                round(os.getloadavg()[0], 2),
                by_minute_ms=[[m.get_value_at_percentile(50), m.get_value_at_percentile(99)]
                              for m in minutes if m.get_total_count()], cpu_pct=cpu_pct,
                proc_cpu_pct=proc_cpu_pct)


def process_cpu() -> dict[str, float]:
    """CPU seconds so far by kind of process: this load generator (and its collector), and of its
    children the workers, the Kafka broker and redis-server.  (A child that exited meanwhile drops
    out: compare steps without restarts.)"""
    out: dict[str, float] = {}
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                name, cmd = proc.name(), " ".join(proc.cmdline()[:4])
        except psutil.Error:
            continue
        kind = ("load generator" if proc.pid == me.pid else "worker" if "peakroute worker" in cmd
                else "kafka" if name == "java" else "redis" if "redis" in name else "other")
        out[kind] = out.get(kind, 0.0) + times.user + times.system
    return out


# ------------------------------------------------------------------------------------------------
# The stack and its workers
# ------------------------------------------------------------------------------------------------

#: The worker histograms the soak reports: the effects gate per stage, and per agent the wait of
#: its input messages (Kafka timestamp → batch start), the part of it spent in the batch buffer, and
#: its batches' time and size.
WORKER_HISTOGRAMS = ("peakroute_effects_gate_seconds", "peakroute_input_wait_seconds", "peakroute_batch_wait_seconds",
                     "peakroute_batch_seconds", "peakroute_batch_size")


@dataclass
class Hist:
    """One Prometheus histogram's totals: count, sum, cumulative counts by upper bound."""

    count: float = 0.0
    sum: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    def minus(self, before: Hist | None) -> Hist:
        if before is None:
            return self
        return Hist(self.count - before.count, self.sum - before.sum,
                    {le: n - before.buckets.get(le, 0.0) for le, n in self.buckets.items()})

    def quantile(self, q: float, least: float = 0.0) -> float:
        """As Prometheus' histogram_quantile: linear within the bucket that holds the q-th value
        (``least``: the smallest possible value, where the first bucket starts; 1 for batch sizes)."""
        if self.count <= 0:
            return float("nan")
        rank, lower, below = q * self.count, least, 0.0
        for le in sorted(self.buckets):
            n = self.buckets[le]
            if n >= rank:
                if le == float("inf"):
                    return lower
                return lower + (le - lower) * ((rank - below) / max(1e-9, n - below))
            lower, below = le, n
        return lower

    def summary_ms(self) -> dict[str, float]:
        """Messages (or batches), mean, p50 and p99 in ms (quantiles interpolated within buckets)."""
        return {"n": int(self.count), "mean_ms": round(self.sum / max(1.0, self.count) * 1000, 2),
                "p50_ms": round(self.quantile(0.5) * 1000, 1), "p99_ms": round(self.quantile(0.99) * 1000, 1)}


class Workers:
    def __init__(self, settings: Settings, n: int, logdir: Path, env: dict[str, str],
                 cpus: set[int] | None = None) -> None:
        self.logdir, self.env, self.starts, self.cpus = logdir, env, 0, cpus
        self.ports = [0] * n  # each worker's /metrics (read by histograms)
        self.procs = [self._start(i) for i in range(n)]

    def _start(self, i: int) -> subprocess.Popen:
        from peakroute.stack import free_port

        self.starts += 1
        self.ports[i] = free_port()
        return subprocess.Popen([sys.executable, "-m", "peakroute", "worker", "--metrics-port", str(self.ports[i])],
                                env=self.env,
                                stdout=open(self.logdir / f"worker{i}-{self.starts}.log", "wb"),
                                stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                                preexec_fn=pinned(self.cpus))

    def restart_dead(self) -> list[int]:
        """Restart every worker that exited (as compose/systemd would); return their exit codes."""
        codes = []
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                codes.append(p.returncode)
                self.procs[i] = self._start(i)
        return codes

    def histograms(self, names: tuple[str, ...] = WORKER_HISTOGRAMS) -> dict[str, dict[str, Hist]]:
        """The histograms ``names`` of every worker's /metrics, summed over workers, by their one
        label's value (``stage``, ``agent``).  Workers restarted meanwhile start from 0."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        out: dict[str, dict[str, Hist]] = {name: {} for name in names}
        for port in self.ports:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                continue
            for fam in text_string_to_metric_families(text):
                if fam.name not in out:
                    continue
                for sample in fam.samples:
                    label = sample.labels.get("stage") or sample.labels.get("agent") or "?"
                    h = out[fam.name].setdefault(label, Hist())
                    if sample.name.endswith("_count"):
                        h.count += sample.value
                    elif sample.name.endswith("_sum"):
                        h.sum += sample.value
                    elif sample.name.endswith("_bucket"):
                        le = float(sample.labels["le"])
                        h.buckets[le] = h.buckets.get(le, 0.0) + sample.value
        return out

    def rss_mb(self) -> list[float]:
        out = []
        for p in self.procs:
            try:
                out.append(psutil.Process(p.pid).memory_info().rss / 2**20)
            except psutil.Error:
                out.append(float("nan"))
        return out

    def cpu_s(self) -> float:
        """User + system CPU seconds of all workers so far (every thread: librdkafka's, RocksDB's too)."""
        total = 0.0
        for p in self.procs:
            try:
                t = psutil.Process(p.pid).cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def warm_up(producer: Producer, collector: RequestCollector, catalog: Catalog, seed: int) -> None:
    """A few orders until the workers route: they have joined, recovered and fetched stock."""
    deadline = time.time() + 180
    attempt = 0
    while time.time() < deadline:
        attempt += 1
        wl = workload(catalog, 20, 2, seed * 1000 + attempt, None)
        produce_open_loop(producer, wl, time.time())
        want = routable_orders(wl)
        t = time.time() + 20
        while time.time() < t and len(collector.finished(want)) < len(want):
            time.sleep(0.2)
        if want and len(collector.finished(want)) == len(want):
            return
    raise RuntimeError("workers never started routing (see their logs)")


def state_bytes(settings: Settings) -> int:
    """Bytes of the tables' changelog partitions on the broker's disk."""
    data = Path(settings.state_dir) / "kafka" / "data"
    return sum(f.stat().st_size for d in data.glob(f"{settings.app_id}-*-changelog-*") for f in d.glob("*.log"))


def traffic(settings: Settings, orders: int) -> dict[str, Any]:
    """Messages and bytes on disk per order, by topic (for the capacity model)."""
    from confluent_kafka.admin import AdminClient

    names = [t for t in AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(timeout=10).topics
             if not t.startswith("__") and not t.startswith("bench.")]
    ends = end_offsets(settings.kafka_bootstrap, names)
    msgs: dict[str, int] = {}
    for (topic, _), end in ends.items():
        msgs[topic] = msgs.get(topic, 0) + end
    data = Path(settings.state_dir) / "kafka" / "data"
    size: dict[str, int] = {}
    for d in data.iterdir():
        topic = d.name.rpartition("-")[0]
        if topic in msgs:
            size[topic] = size.get(topic, 0) + sum(f.stat().st_size for f in d.glob("*.log"))
    short = {t: t.replace(settings.app_id + "-", "") for t in msgs}
    n = max(1, orders)
    return {"orders": orders,
            "messages_per_order": round(sum(msgs.values()) / n, 2),
            "bytes_per_order": round(sum(size.values()) / n),
            "by_topic": {short[t]: [round(msgs[t] / n, 2), round(size.get(t, 0) / n)] for t in sorted(msgs)}}


def lag(settings: Settings) -> int:
    ends = end_offsets(settings.kafka_bootstrap, PIPELINE_TOPICS)
    done = committed(settings.kafka_bootstrap, settings.app_id, list(ends))
    return sum(ends[tp] - done.get(tp, 0) for tp in ends)


# ------------------------------------------------------------------------------------------------
# The ceiling: raw confluent-kafka consume -> produce over the same broker
# ------------------------------------------------------------------------------------------------

PASSTHROUGH = r"""
import sys, time
from confluent_kafka import Consumer, Producer
bootstrap, src, dst, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "ceiling", "auto.offset.reset": "earliest",
              "enable.auto.commit": True, "fetch.min.bytes": 1})
p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
c.subscribe([src])
n, t0 = 0, None
while n < total:
    for m in c.consume(1000, 1.0):
        if m.error():
            continue
        if t0 is None:
            t0 = time.perf_counter()
        while True:
            try:
                p.produce(dst, key=m.key(), value=m.value()); break
            except BufferError:
                p.poll(0.01)
        n += 1
    p.poll(0)
p.flush(60)
print(n / (time.perf_counter() - t0))
"""


def pinned(cpus: set[int] | None) -> Any:
    """A ``preexec_fn`` that puts the child on ``cpus`` (its threads inherit it), or None."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def ceiling(settings: Settings, payloads: list[SimEvent], copies: int, cpus: set[int] | None = None) -> float:
    """Messages/s of a one-process raw consume→produce loop (acks=all, idempotent, like the worker's
    producer) over ``copies`` × the workload's payloads; input pre-filled, so only the loop is timed."""
    from peakroute.stack import LocalStack, TopicSpec

    src, dst = "bench.ceiling.in", "bench.ceiling.out"
    LocalStack(settings).ensure_topics([TopicSpec(src, settings.partitions), TopicSpec(dst, settings.partitions)])
    p = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 20})
    total = 0
    for _ in range(copies):
        for ev in payloads:
            while True:
                try:
                    p.produce(src, key=ev.key, value=ev.payload)
                    break
                except BufferError:
                    p.poll(0.05)
            total += 1
    p.flush(120)
    out = subprocess.run([sys.executable, "-c", PASSTHROUGH, settings.kafka_bootstrap, src, dst, str(total)],
                         capture_output=True, text=True, timeout=900, preexec_fn=pinned(cpus))
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# Runs
# ------------------------------------------------------------------------------------------------

def with_stack(tmp: Path, name: str):
    from conftest import local_stack

    return local_stack(tmp / name)


def worker_env(pairs: list[str]) -> dict[str, str]:
    """``--worker-env PEAKROUTE_X=1`` options as a dict (the harness passes no other PEAKROUTE_*
    variable of this shell to the workers, so a setting is A/B'd only when it is named)."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("PEAKROUTE_"):
            raise SystemExit(f"--worker-env wants PEAKROUTE_NAME=value, not {pair!r}")
        env[key] = value
    return env


def drain_backlog(settings: Settings, limit_s: float = 120.0) -> None:
    """Wait (up to ``limit_s``) until the workers have no backlog left."""
    t = time.time() + limit_s
    while time.time() < t and lag(settings) > 0:
        time.sleep(1)


def sweep(args: argparse.Namespace, catalog: Catalog, workers: int, tmp: Path, hot: bool,
          log: list[str]) -> tuple[list[Step], dict[str, Any]]:
    """Fresh stack, ``workers`` worker processes, the rate steps in order until two in a row fail."""
    from integration.harness import env_for

    network = load_network()
    extra: dict[str, Any] = {}
    with with_stack(tmp, f"stack-{'hot' if hot else 'n'}{workers}") as base:
        settings = replace(base, app_id=f"bench-{'hot' if hot else 'n'}{workers}-{int(time.time())}")
        # The rate sweep is a deliberate surge: keep the breaker evaluating, but never tripping.
        env = env_for(settings, PEAKROUTE_BREAKER_TRIP_RATIO="1000000", PEAKROUTE_LOG_LEVEL="WARNING",
                      **worker_env(args.worker_env))
        # Keyed like every channel producer: murmur2, Kafka's default (see connectors/kafka.py).
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True,
                             "acks": "all", "linger.ms": 2, "partitioner": "murmur2_random"})
        hot_units = 0
        if hot:
            # Stock for about half of the hot SKU's demand over the whole sweep, spread over the network.
            demand = 0.3 * sum(args.rates) * args.step_s * 1.3
            hot_units = max(10, int(demand / 2))
            stock = generate_stock(catalog, network, units=10**6, scarce={HOT_SKU: hot_units})
        else:
            stock = generate_stock(catalog, network, units=10**6)
        produce_inventory(producer, stock)
        producer.flush(30)
        logdir = tmp / f"logs-{'hot' if hot else 'n'}{workers}"
        logdir.mkdir(exist_ok=True)
        procs = Workers(settings, workers, logdir, env, cpus=args.pin_workers)
        collector = RequestCollector(settings.kafka_bootstrap, [w.code for w in network.warehouses], settings.partitions)
        collector.start()
        surge = hot_surge(catalog, 0.30, args.seed) if hot else None
        steps: list[Step] = []
        try:
            warm_up(producer, collector, catalog, args.seed + 1)
            if args.warm_s > 0:
                # A fresh broker's JIT compiler takes 30-50% of a core for its first minute or two
                # (RESULTS.md, 2026-12-05 evening): measured steps start after it, at the normal
                # mix (the hot SKU's stock stays for the measured steps).
                wl = workload(catalog, args.rates[0], args.warm_s, args.seed + 50, None)
                step = run_step("warm-up", workers, producer, collector, wl, args.rates[0], args.warm_s, args.grace)
                line = (f"  warm-up  workers={workers} offered={args.rates[0]:7.0f}/s for {args.warm_s:g} s (not "
                        f"reported): p50={step.p50_ms}ms p99={step.p99_ms}ms CPU % {step.proc_cpu_pct}")
                print(line, flush=True)
                log.append(line)
                extra["warm_up"] = {"rate": args.rates[0], "seconds": args.warm_s, "p99_ms": step.p99_ms,
                                    "proc_cpu_pct": step.proc_cpu_pct}
                drain_backlog(settings)
            failures = 0
            for i, rate in enumerate(args.rates):
                wl = workload(catalog, rate, args.step_s, args.seed + 100 + i, surge)
                step = run_step("hot-sku" if hot else "normal", workers, producer, collector, wl, rate, args.step_s,
                                args.grace)
                steps.append(step)
                line = (f"  {step.label:8s} workers={workers} offered={rate:7.0f}/s routed={step.routed}+backordered={step.backordered}/{step.routable} "
                        f"p50={step.p50_ms}ms p99={step.p99_ms}ms p99.9={step.p999_ms}ms max={step.max_ms}ms "
                        f"drained+{step.drained_after_s}s {'OK' if step.sustained else 'SATURATED'} load={step.load1}")
                print(line, flush=True)
                log.append(line)
                codes = procs.restart_dead()
                if codes:
                    step.worker_restarts = len(codes)
                    extra.setdefault("worker_exits", []).append({"rate": rate, "codes": codes})
                    keep = Path(args.out) / f"worker-logs-{'hot' if hot else 'n'}{workers}"
                    keep.mkdir(parents=True, exist_ok=True)
                    for f in logdir.glob("*.log"):
                        (keep / f.name).write_bytes(f.read_bytes()[-200_000:])
                    print(f"  worker(s) exited with {codes}: restarted; logs kept in {keep}", flush=True)
                failures = 0 if step.sustained else failures + 1
                if failures >= 2:
                    break
                drain_backlog(settings)  # so steps do not contaminate each other
            extra["rss_mb_after_sweep"] = procs.rss_mb()
            extra["changelog_bytes"] = state_bytes(settings)
            extra["orders_total"] = sum(s.new_orders for s in steps)
            extra["traffic"] = traffic(settings, extra["orders_total"])
            if hot:
                out = subprocess.run([sys.executable, "-m", "peakroute", "audit"], env=env, capture_output=True,
                                     text=True, timeout=600, cwd=ROOT)
                extra["audit_rc"] = out.returncode
                extra["audit"] = out.stdout.strip().splitlines()[-12:]
                extra["hot_sku_units_total"] = hot_units
            if not hot and workers == args.workers[0] and args.soak_min > 0:
                extra["soak"] = soak(args, catalog, settings, producer, collector, procs, steps)
            if not hot and workers == args.workers[0] and args.ceiling_copies > 0:
                sample = workload(catalog, max(args.rates), min(args.step_s, 10), args.seed + 7, None).events
                extra["ceiling_msgs_s"] = round(ceiling(settings, sample, args.ceiling_copies, args.pin_workers))
                extra["ceiling_payload_bytes_avg"] = round(sum(len(e.payload) for e in sample) / len(sample))
        finally:
            procs.stop()
            collector.stop()
    return steps, extra


def read_records(bootstrap: str, starts: dict[tuple[str, int], int], ends: dict[tuple[str, int], int]) -> Any:
    """(topic, Kafka timestamp in s, value) of every record between ``starts`` and ``ends``."""
    tps = [TopicPartition(t, p, starts.get((t, p), 0)) for (t, p), end in ends.items() if end > starts.get((t, p), 0)]
    if not tps:
        return
    left = {(tp.topic, tp.partition): ends[(tp.topic, tp.partition)] for tp in tps}
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-hops-{os.getpid()}", "enable.auto.commit": False})
    c.assign(tps)
    idle = 0
    try:
        while left and idle < 50:
            msgs = c.consume(5000, 0.2)
            idle = 0 if msgs else idle + 1
            for msg in msgs:
                if msg.error():
                    continue
                key = (msg.topic(), msg.partition())
                if msg.offset() + 1 >= left.get(key, 0):
                    left.pop(key, None)
                if msg.value():
                    yield msg.topic(), msg.timestamp()[1] / 1000.0, msg.value()
    finally:
        c.close()


#: The hops of a routed order, in order (see :func:`hop_anatomy`).
HOPS = ("payload due → reservation requests sent", "→ SKU owner's replies sent", "→ shipment request sent",
        "→ seen by the load test")


def hop_anatomy(bootstrap: str, starts: dict[tuple[str, int], int], wl: Workload, routed: dict[str, float],
                seen: dict[str, float]) -> dict[str, Any]:
    """Where an order's latency goes, from the Kafka timestamps of the messages it caused.

    Per routed order: t0 = the intended time of the payload that made it routable (as in
    :func:`run_step`); t1 = the first reservation request for it on ``stock-ops`` sent at or after
    t0 (the order owner's batch: fetch, batch wait, normalize, plan, effects gate); t2 = the last
    "confirmed" reply for it on ``stock-replies`` before its shipment request (the SKU owner's
    batch); t3 = its first shipment request (the order owner's batch for the replies); t4 = when the
    load test's reader saw it.  Timestamps are the producers' clocks (one machine).  Reported: each
    hop's p50/p90/p99 and, for the slowest 1% of orders end to end, each hop's mean — where the
    tail comes from."""
    ends = end_offsets(bootstrap, [STOCK_OPS, STOCK_REPLIES])
    reserves: dict[str, list[float]] = {}
    confirms: dict[str, list[float]] = {}
    for topic, ts, value in read_records(bootstrap, starts, ends):
        doc = orjson.loads(value)
        if topic == STOCK_OPS:
            for op in doc.get("ops", ()):
                if op.get("op") == "reserve" and op.get("order_id") in routed:
                    reserves.setdefault(op["order_id"], []).append(ts)
        else:
            for r in doc.get("replies", ()):
                if r.get("outcome") == "confirmed" and r.get("order_id") in routed:
                    confirms.setdefault(r["order_id"], []).append(ts)
    rows: list[tuple[float, ...]] = []
    for oid, t3 in routed.items():
        sent = wl.sent_at.get(oid, [])
        i = bisect.bisect_right(sent, t3) - 1
        if not sent or oid not in seen:
            continue
        t0 = sent[max(i, 0)]
        t1 = min((ts for ts in reserves.get(oid, ()) if ts >= t0 - 0.001), default=None)
        t2 = max((ts for ts in confirms.get(oid, ()) if ts <= t3), default=None)
        if t1 is None or t2 is None or not t0 <= t1 + 0.001 <= t2 + 0.002 <= t3 + 0.003:
            continue
        rows.append((t1 - t0, t2 - t1, t3 - t2, max(0.0, seen[oid] - t3)))
    if not rows:
        return {"orders": 0}
    totals = sorted(range(len(rows)), key=lambda k: sum(rows[k][:3]))
    tail = [rows[k] for k in totals[int(len(rows) * 0.99):]]

    def pct(values: list[float], q: float) -> float:
        values = sorted(values)
        return round(values[min(len(values) - 1, int(len(values) * q))] * 1000, 1)

    out: dict[str, Any] = {"orders": len(rows), "of_routed": len(routed), "hops": {}}
    for j, name in enumerate(HOPS):
        col = [r[j] for r in rows]
        out["hops"][name] = {"p50_ms": pct(col, 0.5), "p90_ms": pct(col, 0.9), "p99_ms": pct(col, 0.99),
                             "max_ms": pct(col, 1.0),
                             "slowest_1pct_mean_ms": round(sum(r[j] for r in tail) / len(tail) * 1000, 1)}
    return out


def soak(args: argparse.Namespace, catalog: Catalog, settings: Settings, producer: Producer,
         collector: RequestCollector, procs: Workers, steps: list[Step]) -> dict[str, Any]:
    """Half the max sustained rate for ``--soak-min`` minutes; worker RSS every 10 s."""
    ok = [s.offered_orders_s for s in steps if s.sustained]
    rate = args.soak_rate or max(1.0, (max(ok) if ok else steps[0].offered_orders_s) / 2)
    seconds = args.soak_min * 60
    wl = workload(catalog, rate, seconds, args.seed + 999, None)
    samples: list[tuple[float, list[float]]] = []
    cpu: list[float] = []  # the workers' CPU seconds at each sample
    stop = threading.Event()

    def sample() -> None:
        t0 = time.time()
        while not stop.is_set():
            samples.append((round(time.time() - t0, 1), procs.rss_mb()))
            cpu.append(procs.cpu_s())
            stop.wait(10)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    bytes0 = state_bytes(settings)
    hists0 = procs.histograms()
    hop_starts = end_offsets(settings.kafka_bootstrap, [STOCK_OPS, STOCK_REPLIES])
    print(f"  soak: {rate:.0f} orders/s for {args.soak_min} min ({len(wl.events)} payloads)", flush=True)
    step = run_step("soak", len(procs.procs), producer, collector, wl, rate, seconds, max(args.grace, 30))
    stop.set()
    sampler.join(15)
    routed = collector.routed(routable_orders(wl))
    hops = hop_anatomy(settings.kafka_bootstrap, hop_starts, wl, routed, collector.seen_at(set(routed)))
    hists = {name: {label: h.minus(hists0.get(name, {}).get(label)) for label, h in by_label.items()}
             for name, by_label in procs.histograms().items()}
    gate = {stage: {"batches": int(h.count), "mean_ms": round(h.sum / h.count * 1000, 2),
                    "over_5ms_pct": round((h.count - h.buckets.get(0.005, 0.0)) / h.count * 100, 1)}
            for stage, h in hists["peakroute_effects_gate_seconds"].items() if h.count > 0}
    waits = {f"{agent}: {what}": h.summary_ms()
             for name, what in (("peakroute_input_wait_seconds", "Kafka timestamp → batch start"),
                                ("peakroute_batch_wait_seconds", "in the batch buffer"))
             for agent, h in sorted(hists[name].items()) if h.count > 0}
    agent_batches = {agent: {"batches": int(h.count), "mean_size": round(h.sum / h.count, 1),
                             "p50_size": round(h.quantile(0.5, 1.0), 1), "p99_size": round(h.quantile(0.99, 1.0), 1),
                             **{f"{k}_batch": v for k, v in hists["peakroute_batch_seconds"].get(
                                 agent, Hist()).summary_ms().items() if k != "n"}}
                     for agent, h in sorted(hists["peakroute_batch_size"].items()) if h.count > 0}
    rss = [sum(v) for _, v in samples]
    n = len(rss)
    first = sum(rss[: max(1, n // 10)]) / max(1, n // 10)
    last = sum(rss[-max(1, n // 10):]) / max(1, n // 10)
    # A bounded cache (RocksDB's) fills first and then stays: the second half shows the trend.
    k = max(1, n // 10)
    half = rss[n // 2: n // 2 + k]
    middle = sum(half) / max(1, len(half))
    # Orders between the centres of the averaged windows (samples are evenly spaced in time).
    span_all = max(1.0, step.new_orders * max(1, n - k) / max(1, n))
    span_half = max(1.0, step.new_orders * max(1.0, n - k / 2 - (n // 2 + k / 2)) / max(1, n))
    return {"rate": rate, "minutes": args.soak_min, "step": asdict(step), "rss_samples": samples,
            "rss_first_10pct_mb": round(first, 1), "rss_middle_mb": round(middle, 1),
            "rss_last_10pct_mb": round(last, 1),
            "rss_growth_mb_per_100k_orders": round((last - first) / span_all * 1e5, 1),
            "rss_second_half_growth_mb_per_100k_orders": round((last - middle) / span_half * 1e5, 1),
            "rss_by_minute_mb": [round(r) for r in rss[::6]],
            # A worker near 100% of a core is saturated whatever the step says: latency then grows
            # with every disturbance.  (Sum over workers; one worker's Python is bound to one core.)
            "worker_cpu_pct_by_minute": [round((cpu[i + 6] - cpu[i]) / 60 * 100) for i in range(0, len(cpu) - 6, 6)],
            "changelog_bytes_per_order": round((state_bytes(settings) - bytes0) / max(1, step.new_orders), 1),
            "effects_gate": gate, "hops": hops, "input_waits": waits, "batches": agent_batches,
            "held": soak_held(step)}


def soak_held(step: Step) -> bool:
    """A soak *holds* its rate if everything was routed within the grace (``sustained``) and the
    median latency did not climb: the last minute's p50 at most twice the lowest minute's.  A queue
    that grows slowly still drains within the grace after a few minutes, so ``sustained`` alone
    called a soak held whose p50 went 6 → 15 → 24 s (2026-12-05, 800/s)."""
    p50s = [p50 for p50, _ in step.by_minute_ms]
    if not step.sustained or not p50s:
        return False
    return p50s[-1] <= 2 * max(1.0, min(p50s))


def machine() -> dict[str, Any]:
    import confluent_kafka
    import faust

    return {"cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "faust": faust.__version__,
            "confluent_kafka": confluent_kafka.__version__, "librdkafka": confluent_kafka.libversion()[0],
            "kafka": Settings.from_env().kafka_version, "load_1m_at_start": os.getloadavg()[0],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git_commit()}


def git_commit() -> str:
    """The checkout's commit (``+dirty`` with uncommitted changes), so a result names its code.

    The workers run ``python -m peakroute`` from this checkout, so that is the code measured: to
    measure another revision run *its* ``benchmarks/loadtest.py`` (a worktree) — setting
    PYTHONPATH to another checkout does not change what the workers import."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev or "unknown") + ("+dirty" if dirty else "")


def report(args: argparse.Namespace, meta: dict[str, Any], runs: dict[str, tuple[list[Step], dict[str, Any]]]) -> str:
    pin = meta.get("pinned")
    where = (f"workers pinned to CPU {','.join(map(str, pin['workers']))}, the broker, Redis and the load generator "
             f"to CPU {','.join(map(str, pin['rest']))}" if pin else "same cores")
    lines = [f"### Load test {meta['date']}, commit {meta.get('commit', 'unknown')}", "",
             f"`{meta['command']}`", "",
             f"Machine: {meta['cores']} cores, {meta['ram_gib']} GiB, load {meta['load_1m_at_start']:.2f} at start; "
             f"Python {meta['python']}, faust-streaming {meta['faust']}, confluent-kafka {meta['confluent_kafka']} "
             f"(librdkafka {meta['librdkafka']}), Kafka {meta['kafka']} (one broker, {where}), "
             f"{meta['partitions']} partitions, tables in {meta.get('table_store', 'memory')}, "
             f"step {args.step_s:g} s, grace {args.grace:g} s.", ""]
    ceil = None
    for extra in (e for _, e in runs.values()):
        ceil = extra.get("ceiling_msgs_s") or ceil
    lines += ["| run | workers | offered orders/s | payloads | routed+backordered / routable | p50 ms | p99 ms | p99.9 ms | max ms "
              "| producer behind ms | drained after s | sustained | load1 | worker restarts | CPU busy % by core "
              "| CPU % by process (100 = one core) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    best: dict[str, float] = {}
    for name, (steps, _) in runs.items():
        for s in steps:
            lines.append(f"| {s.label} | {s.workers} | {s.offered_orders_s:g} | {s.payloads} | {s.routed}/{s.routable} "
                         f"+{s.backordered} | {s.p50_ms} | {s.p99_ms} | {s.p999_ms} | {s.max_ms} | {s.producer_behind_ms} "
                         f"| {s.drained_after_s} | {'yes' if s.sustained else '**no**'} | {s.load1} | {s.worker_restarts} "
                         f"| {' / '.join(f'{c:.0f}' for c in s.cpu_pct)} "
                         f"| {', '.join(f'{k} {v:.0f}' for k, v in s.proc_cpu_pct.items())} |")
            if s.sustained:
                pay_rate = s.payloads / s.seconds
                if pay_rate > best.get(name + ":payloads", 0):
                    best[name + ":payloads"] = pay_rate
                    best[name] = s.offered_orders_s
    lines.append("")
    for name in runs:
        if name in best:
            ratio = f"; {best[name + ':payloads'] / ceil:.4f} of the raw ceiling ({ceil:,.0f} msg/s)" if ceil else ""
            lines.append(f"- **{name}**: max sustained {best[name]:g} orders/s "
                         f"({best[name + ':payloads']:.0f} raw payloads/s){ratio}")
        else:
            lines.append(f"- **{name}**: no step sustained")
    for name, (_, extra) in runs.items():
        shown = {k: v for k, v in extra.items() if k not in ("soak",)}
        lines.append(f"- {name} details: `{json.dumps(shown, ensure_ascii=False)}`")
        if "soak" in extra:
            s = extra["soak"]
            lines.append(f"- **soak** ({name}): {s['rate']:.0f} orders/s for {s['minutes']} min: RSS "
                         f"{s['rss_first_10pct_mb']} MB (first 10%) → {s['rss_last_10pct_mb']} MB (last 10%), "
                         f"{s['rss_growth_mb_per_100k_orders']} MB per 100k orders (second half: "
                         f"{s.get('rss_middle_mb')} → {s['rss_last_10pct_mb']} MB, "
                         f"{s.get('rss_second_half_growth_mb_per_100k_orders')} MB per 100k orders; by minute "
                         f"{s.get('rss_by_minute_mb')}); worker CPU % by minute "
                         f"{s.get('worker_cpu_pct_by_minute')}; changelog "
                         f"{s['changelog_bytes_per_order']} B/order; p99 {s['step']['p99_ms']} ms "
                         f"([p50, p99] ms by minute {s['step'].get('by_minute_ms')}), "
                         f"sustained: {s['step']['sustained']}; **held: {s.get('held')}** (sustained, and the last "
                         f"minute's p50 at most twice the lowest minute's); effects gate (wait per batch) "
                         f"{s.get('effects_gate')}")
            hops = s.get("hops") or {}
            if hops.get("hops"):
                lines += ["", f"  Where the soak's latency goes ({hops['orders']} of {hops['of_routed']} routed orders "
                          "traced through stock-ops and stock-replies):", "",
                          "  | hop | p50 ms | p90 ms | p99 ms | max ms | mean in the slowest 1% ms |",
                          "  |---|---|---|---|---|---|"]
                lines += [f"  | {name} | {h['p50_ms']} | {h['p90_ms']} | {h['p99_ms']} | {h['max_ms']} "
                          f"| {h['slowest_1pct_mean_ms']} |" for name, h in hops["hops"].items()]
            if s.get("input_waits"):
                lines += ["", "  Each agent's input messages, from their Kafka timestamp to the start of their batch "
                          "(worker histograms; quantiles interpolated within buckets):", "",
                          "  | agent: part | messages | mean ms | p50 ms | p99 ms |", "  |---|---|---|---|---|"]
                lines += [f"  | {what} | {w['n']} | {w['mean_ms']} | {w['p50_ms']} | {w['p99_ms']} |"
                          for what, w in s["input_waits"].items()]
            if s.get("batches"):
                lines += ["", "  Each agent's batches (from its start until the agent asks for the next one):", "",
                          "  | agent | batches | size mean / p50 / p99 | time mean / p50 / p99 ms |",
                          "  |---|---|---|---|"]
                lines += [f"  | {agent} | {b['batches']} | {b['mean_size']} / {b['p50_size']} / {b['p99_size']} "
                          f"| {b['mean_ms_batch']} / {b['p50_ms_batch']} / {b['p99_ms_batch']} |"
                          for agent, b in s["batches"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    import signal

    # Workers run in their own sessions: turn a SIGTERM of this script into an exception, so the
    # `finally` blocks stop them and their stacks instead of leaving orphans that eat the CPU.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="50,100,200,300,400,600,800",
                    help="offered new orders/s per step, ascending (default %(default)s)")
    ap.add_argument("--step-s", type=float, default=20.0, help="seconds per step (default %(default)s)")
    ap.add_argument("--grace", type=float, default=2.0,
                    help="a step is sustained if everything is routed this long after its end (default %(default)s)")
    ap.add_argument("--workers", default="1,2,3", help="worker counts for the scale-out (default %(default)s)")
    ap.add_argument("--no-hot", action="store_true", help="skip the hot-SKU run")
    ap.add_argument("--soak-min", type=float, default=10.0, help="soak minutes at half the max rate; 0 skips it")
    ap.add_argument("--soak-rate", type=float, default=0.0,
                    help="soak at this many orders/s instead of half the max sustained step (a short step "
                         "can look sustained while buffers absorb it: see the soak's CPU by minute)")
    ap.add_argument("--ceiling-copies", type=int, default=10,
                    help="ceiling input = this many copies of a 10 s workload at the top rate; 0 skips it")
    ap.add_argument("--seed", type=int, default=20261111)
    ap.add_argument("--worker-env", action="append", default=[], metavar="PEAKROUTE_NAME=VALUE",
                    help="a setting for the worker processes (repeatable), e.g. PEAKROUTE_BATCH_WAIT_MS=40")
    ap.add_argument("--warm-s", type=float, default=60.0,
                    help="seconds of load at the first rate before the measured steps, not reported: a fresh "
                         "broker's JIT compiler is busy for its first minute or two (default %(default)s)")
    ap.add_argument("--pin-workers", default="", metavar="CPUS",
                    help="run the workers (and the ceiling's passthrough) on these CPUs, e.g. 1, and the broker, "
                         "Redis and this load generator on the others: a worker with a core of its own")
    ap.add_argument("--smoke", action="store_true", help="a few seconds per part (the test suite runs this)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="directory for the .md/.json results")
    args = ap.parse_args()
    if args.smoke:
        args.rates, args.step_s, args.workers, args.soak_min, args.ceiling_copies = "20", 3.0, "1", 0.15, 1
        args.warm_s = 2.0
        args.grace = 10.0
    args.rates = [float(r) for r in str(args.rates).split(",")]
    args.workers = [int(w) for w in str(args.workers).split(",")]
    args.pin_workers = {int(c) for c in args.pin_workers.split(",") if c.strip()} or None
    if args.pin_workers:
        rest = os.sched_getaffinity(0) - args.pin_workers
        if not rest or not args.pin_workers <= os.sched_getaffinity(0):
            raise SystemExit(f"--pin-workers {sorted(args.pin_workers)}: must name some, not all, of the CPUs "
                             f"{sorted(os.sched_getaffinity(0))}")
        os.sched_setaffinity(0, rest)  # this process and what it starts: the stack, the collector
    catalog = load_catalog()
    meta = machine()
    meta["command"] = "python benchmarks/loadtest.py " + " ".join(sys.argv[1:])
    meta["pinned"] = ({"workers": sorted(args.pin_workers), "rest": sorted(os.sched_getaffinity(0))}
                      if args.pin_workers else None)
    meta["partitions"] = Settings.from_env().partitions
    meta["table_store"] = Settings.from_env().table_store
    runs: dict[str, tuple[list[Step], dict[str, Any]]] = {}
    log: list[str] = []
    with tempfile.TemporaryDirectory(prefix="peakroute-bench-") as tmpdir:
        tmp = Path(tmpdir)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = "smoke" if args.smoke else time.strftime("%Y%m%d-%H%M%S")

        def save() -> str:  # after every run, so a later failure keeps what was measured
            text = report(args, meta, runs)
            (out / f"loadtest-{stem}.md").write_text(text)
            (out / f"loadtest-{stem}.json").write_text(json.dumps(
                {"meta": meta, "runs": {k: {"steps": [asdict(s) for s in v[0]], "extra": v[1]} for k, v in runs.items()}},
                indent=1, ensure_ascii=False, default=str))
            return text

        for n in args.workers:
            print(f"normal mix, {n} worker(s):", flush=True)
            runs[f"normal x{n}"] = sweep(args, catalog, n, tmp, hot=False, log=log)
            save()
        if not args.no_hot:
            print("hot SKU (30% of orders), 1 worker:", flush=True)
            runs["hot-sku x1"] = sweep(args, catalog, 1, tmp, hot=True, log=log)
    text = save()
    print("\n" + text)
    hot = runs.get("hot-sku x1")
    if hot and hot[1].get("audit_rc") not in (0, None):
        print("AUDIT FAILED on the hot-SKU run", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
