"""``peakroute``: the one command line of PeakRoute.  Every sub-command has ``--help``.

Configuration comes from ``PEAKROUTE_*`` environment variables (``peakroute config`` lists them).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .config import CHANNELS, Settings


def _stack(args: argparse.Namespace, settings: Settings) -> int:
    from .logs import redact_credentials
    from .stack import LocalStack, StackError
    from .streams.topics import topic_specs

    stack = LocalStack(settings, log=lambda s: print(redact_credentials(s), file=sys.stderr))
    try:
        if args.action == "up":
            stack.up(topic_specs(settings))
            _print_status(stack.status())
        elif args.action == "down":
            stack.reset() if args.purge else stack.down()
        elif args.action == "status":
            _print_status(stack.status())
        elif args.action == "logs":
            print(redact_credentials(stack.logs(args.lines)))
    except StackError as exc:
        print(f"error: {redact_credentials(str(exc))}", file=sys.stderr)
        return 1
    return 0


def _print_status(status: dict) -> None:
    from .config import mask_url

    for name, info in status.items():
        extra = " ".join(f"{k}={mask_url(v) if k == 'url' and isinstance(v, str) else v}"
                         for k, v in info.items() if k != "state" and v is not None)
        print(f"{name:6} {info.get('state', '?'):8} {extra}")


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    import faust

    from .metrics.registry import serve
    from .stack import StackError, ensure_topics_on
    from .streams.app import build_app
    from .streams.topics import changelog_specs, topic_specs

    try:
        ensure_topics_on(settings.kafka_bootstrap, [*topic_specs(settings), *changelog_specs(settings)], timeout=60)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    serve(args.metrics_port)
    if settings.event_loop == "uvloop":
        import mode.loop

        mode.loop.use("uvloop")  # before any loop exists: faust's worker then runs on libuv
    elif settings.event_loop != "asyncio":
        print(f"error: PEAKROUTE_EVENT_LOOP must be uvloop or asyncio, not {settings.event_loop!r}", file=sys.stderr)
        return 2
    app = build_app(settings)
    from .logs import logging_config

    worker = faust.Worker(app, loglevel=args.loglevel, quiet=True,
                          logging_config=logging_config(settings.log_level, settings.log_format, args.loglevel))
    # No terminal spinner: faust's sets the root handler's level to --loglevel (warning by default),
    # which silenced PEAKROUTE_LOG_LEVEL=INFO lines (table restores, republished stock views), and
    # it wrote terminal escape codes into every worker log.
    worker.spinner = None
    # Everything built so far (modules, the app, its agents and tables) lives as long as the
    # process: moved out of the collector's reach, a full collection no longer walks it (measured
    # in benchmarks/RESULTS.md: the pauses of the oldest generation).
    import gc

    gc.collect()
    gc.freeze()
    # A batch allocates thousands of short-lived dicts (decoded payloads and states) that reference
    # counting frees anyway; with the default threshold (700) the young generation was collected
    # every order or two (~2.5% of the event loop in a native profile).
    gc.set_threshold(20_000, 20, 10)
    worker.execute_from_commandline()
    return 0


def _reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from .metrics.reconciler import run_reconciler

    run_reconciler(settings, args.metrics_port)
    return 0


def _api(args: argparse.Namespace, settings: Settings) -> int:
    from .api import run_api

    run_api(settings, args.port)
    return 0


def _normalize(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from .domain.canonical import Rejection
    from .domain.catalog import load_catalog
    from .domain.channels import normalize

    raw = sys.stdin.buffer.read()
    try:
        order = normalize(args.channel, raw, load_catalog(settings.catalog_file or None))
    except Rejection as rej:
        sys.stdout.buffer.write(orjson.dumps(rej.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
        return 2
    sys.stdout.buffer.write(orjson.dumps(order.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from .connectors.kafka import make_producer
    from .connectors.replay import replay_file

    def progress(s: object) -> None:
        print(f"\r  replayed {s.lines} lines, delivered {s.delivered}",
              end="", file=sys.stderr, flush=True)

    stats = replay_file(args.file, args.channel, make_producer(settings), progress)
    print(f"\rreplayed {stats.lines} payloads to peakroute.raw.{args.channel}: delivered {stats.delivered}, "
          f"failed {stats.failed}, without order id {stats.without_key}, {stats.elapsed_s:.1f} s", file=sys.stderr)
    for err in stats.errors:
        print(f"  delivery error: {err}", file=sys.stderr)
    return 0 if stats.failed == 0 else 1


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from .connectors.kafka import make_producer
    from .connectors.simulator import PeakSaleSimulator, parse_surge, run_simulation
    from .domain.catalog import load_catalog

    try:
        surge = parse_surge(args.surge) if args.surge is not None else None
    except ValueError as exc:
        print(f"error: --surge: {exc}", file=sys.stderr)
        return 2
    sim = PeakSaleSimulator(rate=args.rate, duration_s=args.duration, seed=args.seed,
                            catalog=load_catalog(settings.catalog_file or None), surge=surge)
    stats = run_simulation(sim, make_producer(settings), realtime=not args.fast, progress=_sim_progress)
    print(file=sys.stderr)
    print(_format_sim_stats(stats))
    return 0 if getattr(stats, "failed", 0) == 0 else 1


def _sim_progress(stats: object) -> None:
    total = getattr(stats, "delivered", 0)
    elapsed = getattr(stats, "elapsed_s", 0.0) or 0.0
    print(f"\r  simulating: {total} payloads delivered, {elapsed:5.1f} s", end="", file=sys.stderr, flush=True)


def _format_sim_stats(stats: object) -> str:
    from dataclasses import asdict, is_dataclass

    d = asdict(stats) if is_dataclass(stats) else vars(stats)  # type: ignore[arg-type]
    return "\n".join(f"  {k}: {v}" for k, v in d.items())


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from .demo import run_demo

    return run_demo(settings, duration_s=args.duration, rate=args.rate, seed=args.seed,
                    surge=not args.no_surge, keep_running=args.keep_running)


def _stock(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from .connectors.kafka import make_producer
    from .connectors.stockload import generate_stock, load_messages, produce_inventory
    from .domain.catalog import load_catalog
    from .domain.network import load_network

    if args.action == "generate":
        try:
            scarce = {k: int(v) for k, v in (item.split("=", 1) for item in args.scarce)}
        except ValueError:
            print("error: --scarce takes SKU=UNITS", file=sys.stderr)
            return 2
        for msg in generate_stock(load_catalog(settings.catalog_file or None),
                                  load_network(settings.network_file or None),
                                  seed=args.seed, units=args.units, scarce=scarce):
            sys.stdout.buffer.write(orjson.dumps(msg) + b"\n")
        return 0
    if not args.target:
        print(f"error: stock {args.action} needs a {'FILE' if args.action == 'load' else 'SKU'}", file=sys.stderr)
        return 2
    if args.action == "load":
        n = produce_inventory(make_producer(settings), load_messages(args.target))
        print(f"wrote {n} inventory messages to peakroute.inventory", file=sys.stderr)
        return 0
    import asyncio

    from .tables.redis_views import RedisViews

    async def show() -> dict:
        views = RedisViews(settings.redis_url)
        try:
            return await views.stock_of(args.target)
        finally:
            await views.close()

    rows = asyncio.run(show())
    if not rows:
        print(f"no stock known for {args.target}", file=sys.stderr)
        return 1
    print(f"{'warehouse':14} {'on_hand':>8} {'reserved':>9} {'safety':>7} {'available':>10}")
    for wh, r in rows.items():
        print(f"{wh:14} {r['on_hand']:>8} {r['reserved']:>9} {r['safety_stock']:>7} {r['available']:>10}")
    return 0


def _ops_call(settings: Settings, method: str, path: str) -> tuple[int, dict]:
    import json
    import os
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if settings.operator_token:
        headers["Authorization"] = f"Bearer {settings.operator_token}"
    headers["X-Operator"] = os.environ.get("USER", "operator")
    req = urllib.request.Request(settings.api_url.rstrip("/") + path, method=method, headers=headers,
                                 data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
    except OSError as exc:
        return 0, {"error": f"cannot reach {settings.api_url} ({exc}); is `peakroute api` running?"}


def _breaker(args: argparse.Namespace, settings: Settings) -> int:
    from urllib.parse import quote

    if args.action == "list":
        status, body = _ops_call(settings, "GET", "/breakers")
        if status != 200:
            print(f"error: {body.get('error', status)}", file=sys.stderr)
            return 1
        print(f"{'breaker':28} {'state':9} {'rate/s':>8} {'baseline':>9} {'held':>6} {'trips':>5}  reason")
        for b in body["breakers"]:
            print(f"{b['key']:28} {b['state']:9} {b['rate']:>8} {b['baseline']:>9} {b['held']:>6} {b['trips']:>5}  {b['reason']}")
        return 0
    if not args.key:
        print("error: give a breaker key, e.g. channel:douyin or sku:SKU-LIPSTICK-07", file=sys.stderr)
        return 2
    path = f"/breakers/{quote(args.key, safe=':')}/{args.action}"
    if args.action == "drain" and args.rate is not None:
        path += f"?rate={args.rate}"
    status, body = _ops_call(settings, "POST", path)
    print(body)
    return 0 if status == 200 else 1


def _review(args: argparse.Namespace, settings: Settings) -> int:
    from urllib.parse import quote

    if args.action == "list":
        q = f"/review?offset={args.offset}&limit={args.limit}" + (f"&key={quote(args.key)}" if args.key else "")
        status, body = _ops_call(settings, "GET", q)
        if status != 200:
            print(f"error: {body.get('error', status)}", file=sys.stderr)
            return 1
        print(f"{body['total']} orders held; showing {len(body['held'])} from {body['offset']}")
        for e in body["held"]:
            print(f"  {e['order_id']:34} {e['key']:28} skus={','.join(e.get('skus', []))}")
        return 0
    if not args.order_id:
        print("error: give an order id, e.g. douyin:6912345678901234567", file=sys.stderr)
        return 2
    status, body = _ops_call(settings, "POST", f"/review/{quote(args.order_id, safe=':')}/{args.action}")
    print(body)
    return 0 if status == 200 else 1


def _audit(args: argparse.Namespace, settings: Settings) -> int:

    from .connectors.topicreader import read_all, read_json_objects
    from .domain.audit import audit, stuck_orders
    from .domain.catalog import load_catalog
    from .domain.channels import normalize
    from .domain.network import load_network
    from .streams.topics import DLQ, INVENTORY, ORDER_EVENTS, ORDERS, RAW_PREFIX, RAW_TOPICS, fulfillment_topic

    catalog = load_catalog(settings.catalog_file or None)
    b = settings.kafka_bootstrap
    print("reading topics from the beginning…", file=sys.stderr)

    def values(topics: list[str]) -> list[dict]:
        return read_json_objects(b, topics)

    raw = [(t, p, o, v) for t, p, o, _k, v in read_all(b, list(RAW_TOPICS))]
    whs = [fulfillment_topic(w.code) for w in load_network(settings.network_file or None).warehouses]
    orders, events = values([ORDERS]), values([ORDER_EVENTS])
    report = audit(
        raw=raw, order_ids=(d["order_id"] for d in orders if "order_id" in d),
        dead_letters=values([DLQ]), events=events, requests=values(whs),
        inventory=values([INVENTORY]),
        normalize_id=lambda topic, value: normalize(topic[len(RAW_PREFIX):], value or b"", catalog).order_id)
    # Run after the workers caught up: a paid order without an outcome then is one the router lost.
    report.problems += [f"stuck: {oid} is paid but has no routing outcome (not held, not cancelled)"
                        for oid in stuck_orders(orders, events)]
    print(report.render())
    return 0 if report.ok else 1


def _config(args: argparse.Namespace, settings: Settings) -> int:
    for var, value, _help in settings.describe():
        print(f"{var}={value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="peakroute",
        description="PeakRoute: a Kafka-native order router for peak-sales events. "
                    "Configuration: PEAKROUTE_* environment variables (see `peakroute config`).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("stack", help="start/stop the local Kafka (KRaft) and Redis",
                       description="Manage the local stack: a real Apache Kafka broker (jars fetched from "
                                   "Maven Central on first use) and a real redis-server, under "
                                   "PEAKROUTE_STATE_DIR. With PEAKROUTE_KAFKA_BOOTSTRAP / PEAKROUTE_REDIS_URL "
                                   "set, those servers are used and nothing is started.")
    s.add_argument("action", choices=["up", "down", "status", "logs"])
    s.add_argument("--purge", action="store_true", help="with down: also delete the stack's data")
    s.add_argument("--lines", type=int, default=50, help="with logs: lines per log (default 50)")
    s.set_defaults(func=_stack)

    w = sub.add_parser("worker", help="run one stream worker (run several side by side to scale out)",
                       description="Run one faust stream worker. Any number may run side by side; "
                                   "give each its own --metrics-port.")
    w.add_argument("--metrics-port", type=int, default=9100, help="Prometheus /metrics port (0: none)")
    w.add_argument("--loglevel", default="warning", help="faust log level (default warning)")
    w.set_defaults(func=_worker)

    rc = sub.add_parser("reconcile", help="independent oversell watchdog (metrics only)",
                        description="Read peakroute.inventory and every peakroute.fulfillment.* topic from the "
                                    "beginning and export, on --metrics-port, the units promised beyond on-hand "
                                    "minus safety stock (must be 0). Independent of the router's own state.")
    rc.add_argument("--metrics-port", type=int, default=9200)
    rc.set_defaults(func=_reconcile)

    a = sub.add_parser("api", help="run the HTTP service (webhooks, order status, stock)",
                       description="Run the stateless HTTP service: POST /channels/{channel}/orders "
                                   "(HMAC-signed webhooks), GET /orders/{order_id} (status, warehouses, "
                                   "timeline), GET /stock/{sku}, GET /healthz.")
    a.add_argument("--port", type=int, default=None, help="listen port (default PEAKROUTE_HTTP_PORT, 8080)")
    a.set_defaults(func=_api)

    n = sub.add_parser("normalize", help="print the canonical order for one raw payload on stdin",
                       description="Read one raw channel payload on stdin; print the canonical order "
                                   "(exit 0) or the rejection {error, field, detail} (exit 2).")
    n.add_argument("--channel", required=True, choices=CHANNELS)
    n.set_defaults(func=_normalize)

    r = sub.add_parser("replay", help="write a JSONL file of raw payloads to a channel's raw topic",
                       description="Backfill after an outage: each non-blank line of FILE is one raw "
                                   "payload, written unchanged to peakroute.raw.CHANNEL.")
    r.add_argument("file")
    r.add_argument("--channel", required=True, choices=CHANNELS)
    r.set_defaults(func=_replay)

    sim = sub.add_parser("simulate", help="produce realistic peak-sale traffic into the raw topics",
                         description="Open-loop simulated peak sale in the four channels' own formats.")
    sim.add_argument("--rate", type=float, default=200.0, help="new orders per second (default 200)")
    sim.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    sim.add_argument("--seed", type=int, default=11, help="random seed (same seed, same traffic)")
    sim.add_argument("--surge", nargs="?", const="default", default=None,
                     help="add a surge; optional spec e.g. channel=douyin,factor=5,start=10,duration=60,"
                          "sku=SKU-LIPSTICK-07,sku_factor=20")
    sim.add_argument("--fast", action="store_true", help="don't pace: produce as fast as possible")
    sim.set_defaults(func=_simulate)

    d = sub.add_parser("demo", help="stack up, worker running, a simulated peak sale, a summary",
                       description="The main job end to end: start the local stack, a worker and the "
                                   "api, run a simulated Double-11 peak, then print what happened.")
    d.add_argument("--duration", type=float, default=60.0, help="seconds of simulated traffic (default 60)")
    d.add_argument("--rate", type=float, default=150.0, help="new orders per second (default 150)")
    d.add_argument("--seed", type=int, default=11)
    d.add_argument("--no-surge", action="store_true", help="no douyin/hot-SKU surge")
    d.add_argument("--keep-running", action="store_true", help="leave worker and stack running afterwards")
    d.set_defaults(func=_demo)

    st = sub.add_parser("stock", help="seed, load or show stock",
                        description="Stock goes in through peakroute.inventory, like a WMS snapshot: "
                                    "`load FILE` (JSON array or JSON lines of inventory messages), "
                                    "`generate` (print a consistent initial stock for the catalog and network), "
                                    "`show SKU` (the stock view: on hand, reserved, available per warehouse).")
    st.add_argument("action", choices=["load", "generate", "show"])
    st.add_argument("target", nargs="?", help="FILE for load, SKU for show")
    st.add_argument("--units", type=int, default=2000, help="generate: typical units per SKU and warehouse")
    st.add_argument("--scarce", action="append", default=[], metavar="SKU=UNITS",
                    help="generate: cap a SKU's total units (repeatable)")
    st.add_argument("--seed", type=int, default=11)
    st.set_defaults(func=_stock)

    b = sub.add_parser("breaker", help="surge breakers: list, trip, close, drain (via the api)",
                       description="Operate the surge circuit breakers through `peakroute api` "
                                   "(PEAKROUTE_API_URL). Changes need PEAKROUTE_OPERATOR_TOKEN and are audited. "
                                   "Keys: channel:<tmall|jd|douyin|wxmini> or sku:<SKU>.")
    b.add_argument("action", choices=["list", "trip", "close", "drain"])
    b.add_argument("key", nargs="?", help="breaker key, e.g. channel:douyin")
    b.add_argument("--rate", type=float, default=None, help="drain: orders/s to release")
    b.set_defaults(func=_breaker)

    rv = sub.add_parser("review", help="orders held by a breaker: list, approve, reject (via the api)",
                        description="The review queue of orders held by open breakers. Approve sends an order "
                                    "on to reservation; reject cancels it. Needs PEAKROUTE_OPERATOR_TOKEN.")
    rv.add_argument("action", choices=["list", "approve", "reject"])
    rv.add_argument("order_id", nargs="?")
    rv.add_argument("--key", default=None, help="list: only orders held by this breaker")
    rv.add_argument("--offset", type=int, default=0)
    rv.add_argument("--limit", type=int, default=20)
    rv.set_defaults(func=_review)

    au = sub.add_parser("audit", help="check every promise from the topics: nothing lost, twice or oversold",
                        description="Read every raw, canonical, dead-letter, order-event, warehouse and inventory "
                                    "topic from the beginning and verify: each raw payload reached peakroute.orders "
                                    "or the DLQ; each order has one outcome; no line has two live shipment requests; "
                                    "promised units fit in stock; cancelled orders' shipments were cancelled. "
                                    "Exit 1 with a report when anything fails.")
    au.set_defaults(func=_audit)

    c = sub.add_parser("config", help="show the effective configuration (secrets hidden)")
    c.set_defaults(func=_config)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .logs import setup_logging

    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    setup_logging(settings.log_level, settings.log_format)
    try:
        return int(args.func(args, settings) or 0)
    except BrokenPipeError:  # e.g. `peakroute stock generate | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
