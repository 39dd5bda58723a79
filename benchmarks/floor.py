"""How much of a worker's cost per payload is faust's own, measured in one run (issue 6).

One fresh local stack, one backlog of the simulator's realistic mix on the four raw topics (the
pipeline's real input: same payloads, same 6 partitions per topic), read by one process at a time
from the first offset, each in its own consumer group:

* ``confluent``       a raw confluent-kafka consumer that counts the payloads (auto-commit):
                      the most any Python consumer does here;
* ``faust-each``      a faust agent over the four topics iterating values one at a time
                      (``async for value in stream``: faust's plainest agent);
* ``faust``           a faust agent over the four topics that takes batches the way the pipeline's
                      agents do (``take_events``, 500 per batch, 10 ms wait, uvloop, acks) and does
                      nothing else: faust's own floor per payload;
* ``faust+produce``   the same, producing each payload once through librdkafka (idempotent,
                      acks=all) and waiting for the batch's acknowledgements before taking the next —
                      the worker's outbox rule, with one output per payload instead of ~9;
* ``pipeline``        ``peakroute worker`` draining the backlog (``drain.py``'s measurement): the
                      whole pipeline, normalize → dedup → breaker → reserve → route.

Each line reports payloads/s from the first payload to the last and the process's CPU µs per
payload (all threads: faust's consumer thread, librdkafka's).  The consumer variants are run
``--rounds`` times, interleaved; the pipeline once, last (it changes the stack's state).

    python benchmarks/floor.py --orders 20000 --rounds 2
    python benchmarks/floor.py --smoke                # a few seconds (run by the test suite)
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import local_stack  # noqa: E402
from drain import drain  # noqa: E402

from peakroute.connectors.kafka import make_producer  # noqa: E402
from peakroute.connectors.simulator import PeakSaleSimulator, run_simulation  # noqa: E402
from peakroute.connectors.stockload import generate_stock, produce_inventory  # noqa: E402
from peakroute.demo import end_offsets  # noqa: E402
from peakroute.domain.catalog import load_catalog  # noqa: E402
from peakroute.domain.network import load_network  # noqa: E402
from peakroute.streams.topics import INVENTORY, RAW_TOPICS, STOCK_OPS, STOCK_REPLIES  # noqa: E402

#: A consumer variant, run as ``python -c CONSUMER bootstrap topics total variant group datadir``;
#: prints one JSON line ``{"payloads": n, "seconds": s, "cpu_s": c}`` (first payload → last).
CONSUMER = r"""
import json, os, sys, time
bootstrap, topics, total, variant, group, datadir = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), \
    sys.argv[4], sys.argv[5], sys.argv[6]
mark = {"n": 0, "t0": None, "c0": None, "first": 0}

def seen(k):
    # Timed from the first delivery on; the payloads of that first delivery are not counted
    # (they arrived in no time), so a backlog read in a few deliveries is not flattered.
    if mark["t0"] is None:
        mark["t0"], mark["c0"], mark["first"] = time.perf_counter(), time.process_time(), k
    mark["n"] += k
    if mark["n"] >= total:
        print(json.dumps({"payloads": max(1, mark["n"] - mark["first"]), "seconds": time.perf_counter() - mark["t0"],
                          "cpu_s": time.process_time() - mark["c0"]}), flush=True)
        os._exit(0)

if variant == "confluent":
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": True})
    c.subscribe(topics)
    while True:
        got = sum(1 for m in c.consume(500, 1.0) if not m.error())
        if got:
            seen(got)

import mode.loop
mode.loop.use("uvloop")
import asyncio
import faust
from confluent_kafka import Producer

app = faust.App(group, broker="kafka://" + bootstrap, store="memory://", datadir=datadir, web_enabled=False,
                consumer_auto_offset_reset="earliest", processing_guarantee="at_least_once",
                broker_commit_interval=1.0, stream_buffer_maxsize=16384, topic_replication_factor=1,
                key_serializer="raw", value_serializer="raw")
source = app.topic(*topics, key_type=bytes, value_type=bytes)
out = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5})

@app.agent(source)
async def floor(stream):
    if variant == "faust-each":  # faust's plainest agent: one value at a time
        async for _value in stream:
            seen(1)
    async for batch in stream.take_events(500, within=0.01):
        if variant == "faust+produce":
            for event in batch:
                while True:
                    try:
                        out.produce("bench.floor.out", key=event.message.key, value=event.message.value)
                        break
                    except BufferError:
                        out.poll(0.01)
            await asyncio.get_running_loop().run_in_executor(None, out.flush)
        seen(len(batch))

sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
app.main()
"""

VARIANTS = ("confluent", "faust-each", "faust", "faust+produce")


def run_variant(bootstrap: str, total: int, variant: str, group: str, datadir: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CONSUMER, bootstrap, ",".join(RAW_TOPICS), str(total), variant,
                          group, str(datadir)], capture_output=True, text=True, timeout=900)
    # faust's worker logs what is printed (to stderr): the result line is looked for in both.
    found = re.findall(r'\{"payloads".*?\}', out.stdout + out.stderr)
    if not found:
        raise RuntimeError(f"{variant}: no result (rc {out.returncode}): {out.stderr[-2000:]}")
    return json.loads(found[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-pipeline", action="store_true", help="the consumer variants only")
    ap.add_argument("--smoke", action="store_true", help="a few seconds (the test suite runs this)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="directory for the result file")
    args = ap.parse_args()
    if args.smoke:
        args.orders, args.rounds = 300, 1
    stem = "smoke" if args.smoke else time.strftime("%Y%m%d-%H%M%S")
    rows: dict[str, list[dict[str, float]]] = {v: [] for v in (*VARIANTS, "pipeline")}
    with tempfile.TemporaryDirectory() as tmp, local_stack(Path(tmp) / "stack") as settings:
        from integration.harness import env_for

        from peakroute.stack import LocalStack, TopicSpec

        LocalStack(settings).ensure_topics([TopicSpec("bench.floor.out", settings.partitions)])
        catalog, network = load_catalog(), load_network()
        producer = make_producer(settings)
        produce_inventory(producer, generate_stock(catalog, network, units=10**6))
        sim = PeakSaleSimulator(rate=args.orders / 10, duration_s=10, seed=11, catalog=catalog)
        run_simulation(sim, producer, realtime=False)
        raw = sum(end_offsets(settings.kafka_bootstrap, list(RAW_TOPICS)).values())
        print(f"backlog: {raw} raw payloads on {len(RAW_TOPICS)} topics × {settings.partitions} partitions", flush=True)
        for r in range(args.rounds):
            for variant in (VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS))):
                res = run_variant(settings.kafka_bootstrap, raw, variant, f"floor-{variant.replace('+', '-')}-{r}",
                                  Path(tmp) / f"faust-{r}-{variant.replace('+', '-')}")
                rows[variant].append(res)
                print(f"  round {r + 1} {variant:14s} {res['payloads'] / res['seconds']:9,.0f} payloads/s  "
                      f"{res['cpu_s'] / res['payloads'] * 1e6:6.0f} µs CPU per payload", flush=True)
        if not args.no_pipeline:
            res = drain(settings, env_for(settings), raw, Path(tmp), [*RAW_TOPICS, INVENTORY, STOCK_OPS, STOCK_REPLIES])
            if "payloads_s" in res:
                rows["pipeline"].append({"payloads": raw, "seconds": raw / res["payloads_s"],
                                         "cpu_s": res["cpu_us_per_payload"] * raw / 1e6})
    lines = [f"### Faust's floor per payload, {time.strftime('%Y-%m-%d %H:%M')}", "",
             f"`python benchmarks/floor.py {' '.join(sys.argv[1:])}` — {raw} raw payloads, one process at a time "
             "on the same stack (broker and Redis on the same 2 cores); medians over the rounds.", "",
             "| reader | payloads/s | CPU µs per payload | × confluent payloads/s |", "|---|---|---|---|"]
    base = None
    for variant, results in rows.items():
        if not results:
            continue
        rate = statistics.median(x["payloads"] / x["seconds"] for x in results)
        cpu = statistics.median(x["cpu_s"] / x["payloads"] * 1e6 for x in results)
        base = base or rate
        lines.append(f"| {variant} | {rate:,.0f} | {cpu:.0f} | {rate / base:.3f} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"floor-{stem}.md").write_text(text)


if __name__ == "__main__":
    main()
