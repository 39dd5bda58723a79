"""``peakroute demo``: the main job, end to end, on the local stack.

Stack up → worker and api running → a few orders through the signed webhook (and a forged one) →
a simulated Double-11 peak from four channels → wait until the worker has caught up → a summary
computed by reading the output topics back (not from the worker's own counters).
"""

from __future__ import annotations

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
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        res = c.committed([TopicPartition(t, p) for t, p in tps], timeout=10)
        return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in res}
    finally:
        c.close()


def wait_caught_up(settings: Settings, worker: subprocess.Popen, timeout: float = 180) -> float:
    """Wait until the worker's committed offsets reach the raw topics' ends; return seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if worker.poll() is not None:
            raise RuntimeError("worker exited; see its log")
        ends = end_offsets(settings.kafka_bootstrap, list(RAW_TOPICS))
        done = committed(settings.kafka_bootstrap, settings.app_id, list(ends))
        lag = sum(ends[tp] - done.get(tp, 0) for tp in ends)
        print(f"\r  worker catching up: lag {lag:7d} raw messages", end="", file=sys.stderr, flush=True)
        if lag == 0:
            print(file=sys.stderr)
            return time.monotonic() - started
        time.sleep(1)
    raise RuntimeError(f"worker did not catch up within {timeout:.0f} s")


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


def run_demo(settings: Settings, *, duration_s: float, rate: float, seed: int, surge: bool,
             keep_running: bool) -> int:
    from .connectors.kafka import make_producer
    from .connectors.simulator import PeakSaleSimulator, parse_surge, run_simulation
    from .domain.catalog import load_catalog
    from .stack import LocalStack, StackError
    from .streams.topics import topic_specs

    if not settings.webhook_secrets:  # demo-only secrets, generated per run, never printed
        settings = replace(settings, webhook_secrets={ch: secrets.token_hex(16) for ch in CHANNELS})
    say("▶ 1/5 local stack (real Kafka + Redis)")
    try:
        LocalStack(settings, log=lambda s: say("  " + s)).up(topic_specs(settings))
    except StackError as exc:
        say(f"error: {exc}")
        return 1
    watch = [ORDERS, DLQ]
    start = end_offsets(settings.kafka_bootstrap, watch)

    say("▶ 2/5 starting worker (metrics on :9100) and api (webhooks on :%d)" % settings.http_port)
    worker = _spawn(settings, ["worker", "--metrics-port", "9100"], "worker.log")
    api = _spawn(settings, ["api"], "api.log")
    try:
        say("▶ 3/5 webhook showcase")
        for line in _webhook_showcase(settings):
            say("  " + line)

        say(f"▶ 4/5 simulated peak sale: {rate:.0f} new orders/s for {duration_s:.0f} s"
            + (" with a douyin ×5 and hot-SKU ×20 surge" if surge else ""))
        sim = PeakSaleSimulator(rate=rate, duration_s=duration_s, seed=seed, catalog=load_catalog(
            settings.catalog_file or None), surge=parse_surge("default") if surge else None,
            # Unpaid orders lapse within the run so the demo shows expiries (channels use ~30 min).
            pay_timeout_s=max(10, int(duration_s // 2)))

        def progress(s: object) -> None:
            print(f"\r  produced {getattr(s, 'delivered', 0):7d} payloads  {getattr(s, 'elapsed_s', 0):5.1f} s",
                  end="", file=sys.stderr, flush=True)

        stats = run_simulation(sim, make_producer(settings), realtime=True, progress=progress)
        print(file=sys.stderr)
        waited = wait_caught_up(settings, worker)
        time.sleep(1.5)
        say(f"▶ 5/5 summary (read back from {ORDERS} and {DLQ}; caught up {waited:.1f} s after the last order)")
        end = end_offsets(settings.kafka_bootstrap, watch)
        out = read_range(settings.kafka_bootstrap, {k: v for k, v in start.items()},
                         {k: v for k, v in end.items() if k[0] == ORDERS})
        dlq = read_range(settings.kafka_bootstrap, start, {k: v for k, v in end.items() if k[0] == DLQ})
        print(summary(stats, [v for _, v in out], [v for _, v in dlq], out))
    finally:
        if not keep_running:
            _stop(worker)
            _stop(api)
    say(f"logs: {settings.state_path / 'logs'}   stop the stack: peakroute stack down")
    return 0


def summary(stats: object, orders: list[dict], dlq: list[dict], timed: list[tuple[int, dict]]) -> str:
    by_kind = getattr(stats, "by_kind", {}) or {}
    lines = ["", "PeakRoute demo — what happened", "=" * 60]
    produced = getattr(stats, "delivered", 0)
    lines.append(f"raw payloads produced      {produced:>9,}   " + ", ".join(f"{k} {v:,}" for k, v in sorted(by_kind.items())))
    ids = {o["order_id"] for o in orders}
    lines.append(f"canonical order states     {len(orders):>9,}   ({len(ids):,} distinct orders)")
    lines.append(f"dead letters               {len(dlq):>9,}   "
                 + ", ".join(f"{r} {n}" for r, n in Counter(d['reason'] for d in dlq).most_common()))
    dup = produced - len(orders) - len(dlq)
    lines.append(f"dropped as duplicate/stale {max(dup, 0):>9,}   (channel re-sends carrying no news)")
    lines.append("")
    lines.append(f"{'channel':8} {'orders':>8} " + " ".join(f"{s:>15}" for s in
                 ("pending_payment", "paid", "on_hold", "cancelled", "shipped")))
    for ch in CHANNELS:
        mine = [o for o in orders if o["channel"] == ch]
        st = Counter(o["status"] for o in mine)
        lines.append(f"{ch:8} {len({o['order_id'] for o in mine}):>8,} " + " ".join(
            f"{st.get(s, 0):>15,}" for s in ("pending_payment", "paid", "on_hold", "cancelled", "shipped")))
    lines.append("")
    provinces = Counter(o["ship_to"]["province"] for o in orders if o["status"] == "paid")
    lines.append("top destinations (paid): " + ", ".join(f"{p} {n:,}" for p, n in provinces.most_common(5)))
    skus = Counter(line["sku"] for o in orders if o["status"] == "paid" for line in o["lines"] if not line["gift"])
    lines.append("hottest SKUs (paid lines): " + ", ".join(f"{s} {n:,}" for s, n in skus.most_common(4)))
    urgent = sum(1 for o in orders if o.get("urgent"))
    lines.append(f"urgent orders: {urgent:,}   gift lines: {sum(1 for o in orders for ln in o['lines'] if ln['gift']):,}")
    if timed:
        lines.append("")
        lines.append("douyin orders per 5 s (the surge shows here):")
        t0 = min(ts for ts, _ in timed)
        buckets = Counter((ts - t0) // 5000 for ts, o in timed if o["channel"] == "douyin")
        peak = max(buckets.values(), default=1)
        for b in range(int(max(buckets, default=0)) + 1):
            n = buckets.get(b, 0)
            lines.append(f"  {b * 5:4d}s {'█' * int(40 * n / peak):40} {n}")
    lines.append("=" * 60)
    return "\n".join(lines)
