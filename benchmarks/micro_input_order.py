"""Micro-benchmark: the per-record cost of owned_events' in-order check (agents.common.InputOrder).

In-process, no broker: 400 batches of 480 records (20 for each of 24 partitions, contiguous from
batch to batch, so the check always admits), timed with and without ``InputOrder.admit``; the
median batch time per record is printed, three times.  The drain A/B cannot resolve a cost this
small on a noisy 2-core box (benchmarks/RESULTS.md)::

    python benchmarks/micro_input_order.py
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faust.types import TP  # noqa: E402

from peakroute.agents import common  # noqa: E402

N = 480


class Msg:
    __slots__ = ("topic", "partition", "offset", "acked", "tp")

    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset, self.acked = topic, partition, offset, False
        self.tp = TP(topic, partition)


class Ev:
    __slots__ = ("message",)

    def __init__(self, message: Msg) -> None:
        self.message = message


def batch(r: int) -> list[Ev]:
    return [Ev(Msg(f"peakroute.raw.t{i % 4}", (i // 4) % 6, r * 20 + i // 24)) for i in range(N)]


def per_record_us(app: object, with_order: bool, rounds: int = 400) -> float:
    original = common.InputOrder.admit
    if not with_order:
        common.InputOrder.admit = lambda self, tp, offset, committed: None  # type: ignore[method-assign]
    try:
        common.GUARDS.order.reset()
        times = []
        for r in range(rounds):
            b = batch(r)
            t = time.perf_counter()
            common.owned_events(app, b, "bench")  # type: ignore[arg-type]
            times.append(time.perf_counter() - t)
        return statistics.median(times) / N * 1e6
    finally:
        common.InputOrder.admit = original  # type: ignore[method-assign]


def main() -> None:
    logging.disable(logging.WARNING)
    actives = {TP(f"peakroute.raw.t{i}", p) for i in range(4) for p in range(6)}
    app = types.SimpleNamespace(rebalancing=False, tables=types.SimpleNamespace(actives_ready=True),
                                assignor=types.SimpleNamespace(assigned_actives=lambda: actives),
                                consumer=types.SimpleNamespace(_committed_offset={}))
    for _ in range(3):
        without, with_ = per_record_us(app, False), per_record_us(app, True)
        print(f"owned_events per record: without the order check {without:.2f} µs, with {with_:.2f} µs "
              f"(+{with_ - without:.2f} µs)")


if __name__ == "__main__":
    main()
