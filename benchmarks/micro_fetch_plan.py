"""The worker consumer's fetch plan in-process: aiokafka's ``Fetcher._get_actions_per_node``
against ``peakroute.streams.fetch_plan`` on an assignment the shape of a worker's (7 input topics
× 6 partitions with valid positions, 3 changelog topics × 6 paused partitions, one broker, nothing
buffered, nothing in flight: the plan it makes ~300 times a second). No broker: this box's noise
does not reach it.

    python benchmarks/micro_fetch_plan.py [--partitions 6] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from aiokafka.cluster import ClusterMetadata
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.subscription_state import Assignment
from aiokafka.structs import PartitionMetadata, TopicPartition

from peakroute.streams import fetch_plan
from peakroute.streams.topics import INVENTORY, RAW_TOPICS, STOCK_OPS, STOCK_REPLIES

ORIGINAL = Fetcher.__dict__.get("_peakroute_original", Fetcher._get_actions_per_node)


class _Client:
    def __init__(self, cluster: ClusterMetadata) -> None:
        self.cluster = cluster


async def run(args: argparse.Namespace) -> None:
    inputs = [*RAW_TOPICS, INVENTORY, STOCK_OPS, STOCK_REPLIES]
    changelogs = ["order-routing-changelog", "stock-holds-changelog", "stock-levels-changelog"]
    tps = [TopicPartition(t, p) for t in inputs + changelogs for p in range(args.partitions)]
    cluster = ClusterMetadata()
    cluster._partitions = {t: {p: PartitionMetadata(t, p, 1, [1], [1], None) for p in range(args.partitions)}  # noqa: SLF001
                           for t in inputs + changelogs}
    assignment = Assignment(tps)
    for tp in tps:
        assignment.state_value(tp).seek(1000)
        if tp.topic in changelogs:
            assignment.state_value(tp).pause()
    fetcher = Fetcher.__new__(Fetcher)
    for name, value in {"_client": _Client(cluster), "_records": {}, "_in_flight": set(),
                        "_preferred_read_replica": {}, "_max_partition_fetch_bytes": 1048576,
                        "_fetch_max_wait_ms": 500, "_fetch_min_bytes": 1, "_fetch_max_bytes": 52428800,
                        "_isolation_level": 0, "_client_rack": None, "_fetcher_timeout": 0.2}.items():
        setattr(fetcher, name, value)

    def per_call(fn) -> float:  # noqa: ANN001
        t = time.perf_counter()
        for _ in range(args.n):
            fn(fetcher, assignment)
        return (time.perf_counter() - t) / args.n * 1e6

    rows: dict[str, list[float]] = {"aiokafka": [], "lean": []}
    for _ in range(args.rounds):  # interleaved, medians reported
        rows["aiokafka"].append(per_call(ORIGINAL))
        rows["lean"].append(per_call(fetch_plan.get_actions_per_node))
    a, b = statistics.median(rows["aiokafka"]), statistics.median(rows["lean"])
    print(f"{len(tps)} assigned partitions ({len(inputs) * args.partitions} fetched, "
          f"{len(changelogs) * args.partitions} paused); median of {args.rounds} rounds of {args.n} calls")
    print(f"  one plan: aiokafka {a:.1f} µs, lean {b:.1f} µs (×{b / a:.3f}); at 300 plans/s that is "
          f"{a * 300 / 1e4:.1f}% → {b * 300 / 1e4:.1f}% of a core")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=3000, help="plans per round")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
