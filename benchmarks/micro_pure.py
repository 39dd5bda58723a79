"""Micro-benchmark: the worker's pure per-order work, in-process, no broker, no Redis.

The simulator's realistic mix (four channel formats, 1–5 lines, Zipf SKUs, re-sends, unpaid orders)
is normalized and deduplicated (``agents.normalize.process_raw``) and each new canonical state is
planned (``domain.fulfillment.OrderRouter.on_order``, a stock view with everything in stock), as the
fulfillment agent does per raw payload.  Printed: µs per payload for each part, the median of
``--rounds`` passes.  The drain A/B (``compare.py``) cannot resolve a few per cent on this noisy box;
this can, because nothing else shares its measurement::

    python benchmarks/micro_pure.py                       # the working tree
    python benchmarks/micro_pure.py --ab REV_A REV_B      # two revisions, interleaved A B B A …

``--ab`` checks each revision out in a temporary git worktree and runs this file's measurement in a
subprocess per round with that checkout first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(rounds: int, rate: float, seconds: float) -> dict[str, float]:
    """µs per payload of normalize+dedup and of planning, medians over ``rounds`` passes."""
    from peakroute.agents.normalize import process_raw
    from peakroute.connectors.simulator import PeakSaleSimulator
    from peakroute.domain.catalog import load_catalog
    from peakroute.domain.fulfillment import OrderRouter, StockView
    from peakroute.domain.network import load_network

    catalog, network = load_catalog(), load_network()
    payloads = [(e.channel, e.payload) for e in PeakSaleSimulator(rate=rate, duration_s=seconds, seed=7,
                                                                   catalog=catalog).events()]
    view = StockView(available=lambda sku, wh: 10**6, capacity_left=lambda wh: 10**9)
    normalize_us, plan_us = [], []
    for _ in range(rounds):
        versions: dict = {}
        orders = []
        t0 = time.perf_counter()
        for channel, payload in payloads:
            out = process_raw(channel, payload, catalog, versions.get)
            if out.order is not None:
                versions[out.order_id] = out.version
                orders.append(out.order)
        t1 = time.perf_counter()
        router, states = OrderRouter(network, catalog), {}
        for order in orders:
            oid = order["order_id"]
            states[oid], _ = router.on_order(states.get(oid), order, view, "2026-11-11T00:00:00.000Z")
        t2 = time.perf_counter()
        normalize_us.append((t1 - t0) / len(payloads) * 1e6)
        plan_us.append((t2 - t1) / len(payloads) * 1e6)
    n, p = statistics.median(normalize_us), statistics.median(plan_us)
    return {"payloads": len(payloads), "normalize_us": round(n, 2), "plan_us": round(p, 2),
            "total_us": round(n + p, 2)}


def ab(rev_a: str, rev_b: str, rounds: int, args: argparse.Namespace) -> None:
    results: dict[str, list[dict]] = {rev_a: [], rev_b: []}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for rev in (rev_a, rev_b):
            trees[rev] = Path(tmp) / rev.replace("/", "_")
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(trees[rev]), rev],
                           check=True, capture_output=True)
        try:
            order = [rev_a, rev_b, rev_b, rev_a] * ((rounds + 1) // 2)
            for rev in order[: 2 * rounds]:
                out = subprocess.run([sys.executable, __file__, "--root", str(trees[rev]), "--rounds", "3",
                                      "--rate", str(args.rate), "--seconds", str(args.seconds), "--json"],
                                     check=True, capture_output=True, text=True).stdout
                results[rev].append(json.loads(out))
                print(f"{rev}: {results[rev][-1]}", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                               capture_output=True)
    for key in ("normalize_us", "plan_us", "total_us"):
        a = statistics.median(r[key] for r in results[rev_a])
        b = statistics.median(r[key] for r in results[rev_b])
        print(f"{key:>13}: {rev_a} {a:.1f}  {rev_b} {b:.1f}  ratio {b / a:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate", type=float, default=2000, help="simulated new orders per second")
    parser.add_argument("--seconds", type=float, default=10, help="simulated seconds of orders")
    parser.add_argument("--root", help="import peakroute from this checkout (used by --ab)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--ab", nargs=2, metavar=("REV_A", "REV_B"))
    args = parser.parse_args()
    if args.ab:
        ab(*args.ab, args.rounds, args)
        return
    sys.path.insert(0, str(Path(args.root).resolve() if args.root else REPO))
    result = measure(args.rounds, args.rate, args.seconds)
    print(json.dumps(result) if args.json else
          f"{result['payloads']} payloads: normalize+dedup {result['normalize_us']} µs, plan "
          f"{result['plan_us']} µs, together {result['total_us']} µs per payload (median of {args.rounds})")


if __name__ == "__main__":
    main()
