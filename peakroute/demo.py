"""``peakroute demo``: the main job, end to end, on the local stack.

Stack up → worker and api running → a few orders through the signed webhook (and a forged one) →
a simulated Double-11 peak from four channels → wait until the worker has caught up → a summary
computed by reading the output topics back (not from the worker's own counters).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import replace
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from .config import CHANNELS, Settings
from .streams.topics import DLQ, ORDERS, RAW_TOPICS


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _child_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PEAKROUTE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "PEAKROUTE_REDIS_URL": settings.redis_url,
                "PEAKROUTE_STATE_DIR": settings.state_dir, "PEAKROUTE_APP_ID": settings.app_id,
                "PEAKROUTE_PARTITIONS": str(settings.partitions)})
    for ch, secret in settings.webhook_secrets.items():
        env[f"PEAKROUTE_WEBHOOK_SECRET_{ch.upper()}"] = secret
    # A one-minute demo needs a breaker that learns in seconds, and drains in seconds.
    env.setdefault("PEAKROUTE_BREAKER_WINDOW_S", "4")
    env.setdefault("PEAKROUTE_BREAKER_DRAIN_RATE", "120")
    return env


def _spawn(settings: Settings, args: list[str], log_name: str) -> subprocess.Popen:
    logs = settings.state_path / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = open(logs / log_name, "ab")
    return subprocess.Popen([sys.executable, "-m", "peakroute", *args], env=_child_env(settings),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def end_offsets(bootstrap: str, topics: list[str], timeout: float = 30.0) -> dict[tuple[str, int], int]:
    """End offset of every partition of ``topics`` (retrying while fresh topics elect leaders)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "peakroute-demo-probe"})
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                out = {}
                for t in topics:
                    md = c.list_topics(t, timeout=10).topics[t]
                    for p in md.partitions:
                        out[(t, p)] = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
                return out
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        c.close()


def committed(bootstrap: str, group: str, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The group's committed offsets (0 where none yet; retried while the coordinator moves)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        for attempt in range(20):
            try:
                res = c.committed([TopicPartition(t, p) for t, p in tps], timeout=10)
                return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in res}
            except KafkaException:
                if attempt == 19:
                    raise
                time.sleep(0.5)
        return {}
    finally:
        c.close()


def read_range(bootstrap: str, start: dict[tuple[str, int], int], end: dict[tuple[str, int], int]) -> list[tuple[int, dict]]:
    """(broker timestamp ms, decoded value) for every record between two offset snapshots."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "peakroute-demo-reader", "enable.auto.commit": False})
    todo = {tp: (start.get(tp, 0), end[tp]) for tp in end if end[tp] > start.get(tp, 0)}
    c.assign([TopicPartition(t, p, s) for (t, p), (s, _) in todo.items()])
    out: list[tuple[int, dict]] = []
    remaining = dict(todo)
    deadline = time.monotonic() + 60
    while remaining and time.monotonic() < deadline:
        for msg in c.consume(1000, 0.5):
            if msg.error():
                continue
            tp = (msg.topic(), msg.partition())
            if tp in remaining and msg.offset() < remaining[tp][1]:
                out.append((msg.timestamp()[1], orjson.loads(msg.value())))
                if msg.offset() + 1 >= remaining[tp][1]:
                    del remaining[tp]
    c.close()
    return out


def _webhook_showcase(settings: Settings) -> list[str]:
    """Push two real-format orders through the signed webhook, plus a forged and a broken one."""
    from .connectors.signing import signed_headers

    lines = []
    samples_dir = Path(__file__).resolve().parent / "data" / "samples"
    base = f"http://127.0.0.1:{settings.http_port}"
    for _ in range(50):
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.2)

    def post(channel: str, body: bytes, secret: str) -> int:
        req = urllib.request.Request(f"{base}/channels/{channel}/orders", data=body,
                                     headers=signed_headers(secret, body), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    for ch in ("tmall", "jd"):
        path = samples_dir / f"{ch}.json"
        if path.exists():
            status = post(ch, path.read_bytes(), settings.webhook_secrets[ch])
            lines.append(f"signed {ch} sample order      → HTTP {status}")
    forged = post("douyin", b'{"forged": true}', "not-the-secret")
    lines.append(f"forged douyin request         → HTTP {forged} (never written)")
    broken = post("wxmini", b'{"errcode": 0, "order": {"order_id": "demo-broken", "status": 20}}',
                  settings.webhook_secrets["wxmini"])
    lines.append(f"signed but incomplete wxmini  → HTTP {broken} (accepted, then dead-lettered)")
    return lines


def wait_idle(settings: Settings, worker: subprocess.Popen, topics: list[str], timeout: float = 180) -> float:
    """Wait until the worker's group has committed everything on ``topics``; return seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if worker.poll() is not None:
            raise RuntimeError("worker exited; see its log")
        ends = end_offsets(settings.kafka_bootstrap, topics)
        done = committed(settings.kafka_bootstrap, settings.app_id, list(ends))
        lag = sum(ends[tp] - done.get(tp, 0) for tp in ends)
        print(f"\r  worker catching up: lag {lag:7d} messages   ", end="", file=sys.stderr, flush=True)
        if lag == 0:
            print(file=sys.stderr)
            return time.monotonic() - started
        time.sleep(1)
    raise RuntimeError(f"worker did not catch up within {timeout:.0f} s")


def run_demo(settings: Settings, *, duration_s: float, rate: float, seed: int, surge: bool,
             keep_running: bool) -> int:
    from .connectors.kafka import make_producer
    from .connectors.simulator import PeakSaleSimulator, parse_surge, run_simulation
    from .connectors.stockload import generate_stock, produce_inventory
    from .domain.catalog import load_catalog
    from .domain.network import load_network
    from .logs import redact_credentials
    from .stack import LocalStack, StackError
    from .streams.topics import (
        INVENTORY,
        ORDER_EVENTS,
        REVIEW,
        STOCK_OPS,
        STOCK_REPLIES,
        fulfillment_topic,
        topic_specs,
    )

    if not settings.webhook_secrets:  # demo-only secrets, generated per run, never printed
        settings = replace(settings, webhook_secrets={ch: secrets.token_hex(16) for ch in CHANNELS})
    catalog = load_catalog(settings.catalog_file or None)
    network = load_network(settings.network_file or None)
    say("▶ 1/6 local stack (real Kafka + Redis)")
    try:
        LocalStack(settings, log=lambda s: say("  " + redact_credentials(s))).up(topic_specs(settings))
    except StackError as exc:
        say(f"error: {exc}")
        return 1
    wh_topics = [fulfillment_topic(w.code) for w in network.warehouses]
    watch = [ORDERS, DLQ, ORDER_EVENTS, REVIEW, *RAW_TOPICS]
    start = end_offsets(settings.kafka_bootstrap, watch)

    sim = PeakSaleSimulator(rate=rate, duration_s=duration_s, seed=seed, catalog=catalog,
                            start_epoch=time.time() + 5,  # live timestamps: order-to-routed latency is real
                            surge=parse_surge("duration=20") if surge else None,
                            # Unpaid orders lapse within the run so the demo shows expiries (channels use ~30 min).
                            pay_timeout_s=max(10, int(duration_s // 2)))
    hot = sim.default_surge_sku()
    scarce_units = int(rate * duration_s * 0.08)
    say(f"▶ 2/6 seeding stock through peakroute.inventory (hot SKU {hot} capped at {scarce_units} units)")
    producer = make_producer(settings)
    n = produce_inventory(producer, generate_stock(catalog, network, seed=seed, units=int(max(2000, rate * 20)),
                                                   scarce={hot: scarce_units}))
    say(f"  {n} stock snapshots for {len(catalog)} SKUs × {len(network.warehouses)} warehouses")

    say(f"▶ 3/6 starting worker (metrics :9100), reconciler (metrics :9200) and api (:{settings.http_port})")
    worker = _spawn(settings, ["worker", "--metrics-port", "9100"], "worker.log")
    api = _spawn(settings, ["api"], "api.log")
    reconciler = _spawn(settings, ["reconcile", "--metrics-port", "9200"], "reconciler.log")
    try:
        say("▶ 4/6 webhook showcase")
        for line in _webhook_showcase(settings):
            say("  " + line)

        say(f"▶ 5/6 simulated peak sale: {rate:.0f} new orders/s for {duration_s:.0f} s"
            + (f" with a douyin ×5 and {hot} ×20 surge" if surge else ""))

        def progress(s: object) -> None:
            print(f"\r  produced {getattr(s, 'delivered', 0):7d} payloads  {getattr(s, 'elapsed_s', 0):5.1f} s",
                  end="", file=sys.stderr, flush=True)

        stats = run_simulation(sim, producer, realtime=True, progress=progress)
        print(file=sys.stderr)
        waited = wait_idle(settings, worker, [*RAW_TOPICS, INVENTORY, STOCK_OPS, STOCK_REPLIES])
        waited += wait_breakers_closed(settings)
        waited += wait_idle(settings, worker, [*RAW_TOPICS, STOCK_OPS, STOCK_REPLIES])
        time.sleep(2)
        say(f"▶ 6/6 summary (read back from the topics; caught up {waited:.1f} s after the last order)")
        end = end_offsets(settings.kafka_bootstrap, watch)
        def rng(topic: str) -> list[tuple[int, dict]]:
            return read_range(settings.kafka_bootstrap, start, {k: v for k, v in end.items() if k[0] == topic})
        orders = rng(ORDERS)
        dlq = rng(DLQ)
        events = rng(ORDER_EVENTS)
        review = [v for _, v in rng(REVIEW)]
        trips = asyncio.run(_breaker_trips(settings))
        raw_times = _raw_ingest_times(settings, start, end)
        # The independent oversell check reads the whole history of stock and warehouse requests.
        everything = end_offsets(settings.kafka_bootstrap, [INVENTORY, *wh_topics])
        inventory = [v for _, v in read_range(settings.kafka_bootstrap, {}, {k: v for k, v in everything.items()
                                                                            if k[0] == INVENTORY})]
        requests = [v for _, v in read_range(settings.kafka_bootstrap, {}, {k: v for k, v in everything.items()
                                                                           if k[0] != INVENTORY})]
        print(summary(stats, orders, [v for _, v in dlq], events, inventory, requests, raw_times, review, trips))
    finally:
        if not keep_running:
            _stop(worker)
            _stop(api)
            _stop(reconciler)
    say(f"logs: {settings.state_path / 'logs'}")
    say("metrics (while running, e.g. with --keep-running): worker http://127.0.0.1:9100/metrics, "
        "reconciler http://127.0.0.1:9200/metrics; dashboards and alerts: deploy/grafana, deploy/prometheus")
    say(f"try:  peakroute stock show {hot}   |   peakroute stack down")
    return 0


def wait_breakers_closed(settings: Settings, timeout: float = 240) -> float:
    """Wait until no breaker holds orders any more (held orders drained); return seconds waited."""
    from .tables.breaker_store import BreakerStore

    async def holding() -> tuple[int, list[str]]:
        store = BreakerStore(settings.redis_url, settings.partitions)
        try:
            breakers = await store.all()
            keys = [k for k, b in breakers.items() if b.holding]
            held = await store.held_count(breakers)
            return sum(held.values()), keys
        finally:
            await store.close()

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        n, keys = asyncio.run(holding())
        print(f"\r  breakers draining: {n:6d} orders held by {', '.join(keys) or 'none'}        ",
              end="", file=sys.stderr, flush=True)
        if n == 0 and not keys:
            print(file=sys.stderr)
            return time.monotonic() - started
        time.sleep(1)
    print(file=sys.stderr)
    say("  (breakers still draining; the summary shows the orders still held)")
    return time.monotonic() - started


async def _breaker_trips(settings: Settings) -> dict[str, int]:
    from .tables.breaker_store import BreakerStore

    store = BreakerStore(settings.redis_url, settings.partitions)
    try:
        return {k: b.trips for k, b in (await store.all()).items() if b.trips}
    finally:
        await store.close()


def _raw_ingest_times(settings: Settings, start: dict, end: dict) -> dict[str, int]:
    """order_id → broker timestamp (ms) of its first raw payload in this run."""
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "peakroute-demo-raw",
                  "enable.auto.commit": False})
    todo = {tp: (start.get(tp, 0), e) for tp, e in end.items() if tp[0] in RAW_TOPICS and e > start.get(tp, 0)}
    c.assign([TopicPartition(t, p, s) for (t, p), (s, _) in todo.items()])
    out: dict[str, int] = {}
    deadline = time.monotonic() + 60
    while todo and time.monotonic() < deadline:
        for msg in c.consume(2000, 0.5):
            if msg.error():
                continue
            tp = (msg.topic(), msg.partition())
            if tp in todo and msg.offset() < todo[tp][1]:
                if msg.key():
                    oid = f"{msg.topic().rsplit('.', 1)[1]}:{msg.key().decode(errors='replace')}"
                    out.setdefault(oid, msg.timestamp()[1])
                if msg.offset() + 1 >= todo[tp][1]:
                    del todo[tp]
    c.close()
    return out


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summary(stats: object, orders: list[tuple[int, dict]], dlq: list[dict], events: list[tuple[int, dict]],
            inventory: list[dict], requests: list[dict], raw_times: dict[str, int],
            review: list[dict] | None = None, trips: dict[str, int] | None = None) -> str:
    from .domain.reconcile import check_oversell

    by_kind = getattr(stats, "by_kind", {}) or {}
    states = [o for _, o in orders]
    lines = ["", "PeakRoute demo — what happened", "=" * 72]
    produced = getattr(stats, "delivered", 0)
    lines.append(f"raw payloads produced      {produced:>9,}   " + ", ".join(f"{k} {v:,}" for k, v in sorted(by_kind.items())))
    ids = {o["order_id"] for o in states}
    lines.append(f"canonical order states     {len(states):>9,}   ({len(ids):,} distinct orders)")
    lines.append(f"dead letters               {len(dlq):>9,}   "
                 + ", ".join(f"{r} {n}" for r, n in Counter(d['reason'] for d in dlq).most_common()))
    lines.append(f"dropped as duplicate/stale {max(produced - len(states) - len(dlq), 0):>9,}   "
                 "(channel re-sends carrying no news)")

    # Outcome per order: its last routing event in this run.
    last: dict[str, str] = {}
    routed_at: dict[str, int] = {}
    per_wh: Counter = Counter()
    for ts, ev in events:
        kind = ev["event"]
        if kind in ("routed", "split", "backordered", "cancelled", "oversold"):
            last[ev["order_id"]] = kind
        if kind in ("routed", "split"):
            routed_at.setdefault(ev["order_id"], ts)
            for wh in ev["warehouses"]:
                per_wh[wh] += 1
    outcome = Counter(last.values())
    unpaid = len(ids) - len(last)
    lines.append("")
    lines.append(f"routed {outcome['routed']:,} (split {outcome['split']:,} more over 2 warehouses)   "
                 f"backordered {outcome['backordered']:,}   cancelled {outcome['cancelled']:,}   "
                 f"waiting for payment / on hold {max(unpaid, 0):,}")
    lines.append("shipments per warehouse: " + ", ".join(f"{w} {n:,}" for w, n in sorted(per_wh.items())))
    backordered_skus: Counter = Counter()
    final_state = {o["order_id"]: o for o in states}
    for oid, kind in last.items():
        if kind == "backordered" and oid in final_state:
            for line in final_state[oid]["lines"]:
                backordered_skus[line["sku"]] += 1
    if backordered_skus:
        lines.append("stock-outs (backordered lines): " + ", ".join(f"{s} {n:,}" for s, n in backordered_skus.most_common(4)))
    lat = [(routed_at[o] - raw_times[o]) / 1000 for o in routed_at if o in raw_times]
    if lat:
        lines.append(f"ingest → routed latency: p50 {_pct(lat, 0.5) * 1000:.0f} ms, p99 {_pct(lat, 0.99) * 1000:.0f} ms, "
                     f"max {max(lat) * 1000:.0f} ms  ({len(lat):,} orders)")
    review = review or []
    kinds = Counter(r["type"] for r in review)
    held_by = Counter(r["breaker"] for r in review if r["type"] == "held")
    lines.append(f"surge breaker: trips {', '.join(f'{k} ×{n}' for k, n in sorted((trips or {}).items())) or 'none'}; "
                 f"held {kinds['held']:,} ({', '.join(f'{k} {n:,}' for k, n in held_by.most_common(3))}) → "
                 f"released by draining {kinds['released']:,}, approved {kinds['approved']:,}, "
                 f"rejected {kinds['rejected']:,}, cancelled by the channel {kinds['cancelled']:,}, still held "
                 f"{kinds['held'] - kinds['released'] - kinds['approved'] - kinds['rejected'] - kinds['cancelled']:,}")
    report = check_oversell(inventory, requests)
    verdict = "ZERO OVERSELL" if report.ok else f"OVERSOLD at {len(report.violations)} (SKU, warehouse) pairs"
    lines.append(f"independent check (inventory vs. warehouse requests): {verdict} — "
                 f"{len(report.promised):,} (SKU, warehouse) pairs, {report.live_shipments:,} live shipments, "
                 f"{sum(report.promised.values()):,} units promised")
    for sku, wh, promised, sellable in report.violations[:5]:
        lines.append(f"  ✗ {sku} @ {wh}: {promised} promised > {sellable} sellable")

    lines.append("")
    lines.append(f"{'channel':8} {'orders':>8} " + " ".join(f"{s:>15}" for s in
                 ("pending_payment", "paid", "on_hold", "cancelled", "shipped")))
    for ch in CHANNELS:
        mine = [o for o in states if o["channel"] == ch]
        st = Counter(o["status"] for o in mine)
        lines.append(f"{ch:8} {len({o['order_id'] for o in mine}):>8,} " + " ".join(
            f"{st.get(s, 0):>15,}" for s in ("pending_payment", "paid", "on_hold", "cancelled", "shipped")))
    lines.append("")
    provinces = Counter(o["ship_to"]["province"] for o in states if o["status"] == "paid")
    lines.append("top destinations (paid): " + ", ".join(f"{p} {n:,}" for p, n in provinces.most_common(5)))
    skus = Counter(line["sku"] for o in states if o["status"] == "paid" for line in o["lines"] if not line["gift"])
    lines.append("hottest SKUs (paid lines): " + ", ".join(f"{s} {n:,}" for s, n in skus.most_common(4)))
    if orders:
        lines.append("")
        lines.append("douyin orders per 5 s (the surge shows here):")
        t0 = min(ts for ts, _ in orders)
        buckets = Counter((ts - t0) // 5000 for ts, o in orders if o["channel"] == "douyin")
        peak = max(buckets.values(), default=1)
        for b in range(int(max(buckets, default=0)) + 1):
            n = buckets.get(b, 0)
            lines.append(f"  {b * 5:4d}s {'█' * int(40 * n / peak):40} {n}")
    lines.append("=" * 72)
    return "\n".join(lines)
