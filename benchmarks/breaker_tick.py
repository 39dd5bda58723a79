"""How long one breaker tick and one ``holding_keys`` refresh take as the catalog grows, on a real
redis-server: ``--skus`` SKU keys counted at some time today (their breakers stored, closed),
``--active`` of them counted in the last window, plus the four channels.

The tick runs once a second and blocks its worker's event loop while it decides; every worker
refreshes ``holding_keys`` twice a second.  Both used to grow with every SKU ever counted.  Since
the breakers are sharded by stock partition, each worker ticks only its own shards: ``--owners N``
splits the ``--partitions`` shards over N workers (ticked one after the other here) and reports
the slowest worker's tick — what one worker's event loop pays — next to the sum.

    python benchmarks/breaker_tick.py [--skus 1000,10000,50000] [--active 200] [--owners 1,3]
                                      [--partitions 6] [--tree PATH]

``--tree`` runs it on another checkout (e.g. a ``git worktree`` of an older commit) for an A/B;
both versions' store APIs are handled.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


async def measure(url: str, skus: int, active: int, rounds: int, owners: int = 1,
                  partitions: int = 6) -> dict[str, float]:
    import orjson
    import redis.asyncio as aioredis

    from peakroute.domain.breaker import Breaker, BreakerConfig, observe, take_tokens
    from peakroute.tables import breaker_store as bs

    cfg = BreakerConfig()
    r = aioredis.from_url(url)
    await r.flushall()
    sharded = hasattr(bs, "shard_key")
    store = bs.BreakerStore(url, partitions) if sharded else bs.BreakerStore(url)
    channels = [f"channel:{c}" for c in ("tmall", "jd", "douyin", "wxmini")]
    every = [f"sku:S{i:06d}" for i in range(skus)]
    await r.hset(bs.BREAKERS, mapping={k: orjson.dumps(replace(Breaker(k), baseline=1.0, ticks_seen=100).to_dict())
                                       for k in every})
    await r.sadd(bs.KEYS, *every)
    now = time.time()
    # Earlier today every SKU was counted once (hours ago: outside the window) …
    await store.count([(k, int(now) - 3600) for k in every])
    # … and ``active`` of them, with the channels, in each second of the last window.
    for sec in range(int(now) - cfg.window_s, int(now)):
        await store.count([(k, sec) for k in [*channels, *every[:active]] for _ in range(3)])
    new_api = hasattr(store, "evaluate")
    tick_ms, holding_ms, slowest_ms = [], [], []
    for _ in range(rounds):
        if sharded:
            from peakroute.agents.breaker import tick_inputs
            from peakroute.domain.breaker import advance

            per_owner = []
            for o in range(owners):
                t = time.perf_counter()
                shards = [str(p) for p in range(partitions) if p % owners == o] + (["c"] if o == 0 else [])
                rates, keys, held = await tick_inputs(store, shards, cfg.window_s, now)
                await store.evaluate(sorted(keys), lambda k, b, tick, rates=rates, held=held: advance(
                    b, tick, rates.get(k, 0.0), now, cfg, held.get(k, 0))[0], shards=shards, now=now)
                per_owner.append((time.perf_counter() - t) * 1000)
            tick_ms.append(sum(per_owner))
            slowest_ms.append(max(per_owner))
            t = time.perf_counter()
            await store.holding_keys(max_age_s=0)
            holding_ms.append((time.perf_counter() - t) * 1000)
            continue
        t = time.perf_counter()
        rates = await store.rates(cfg.window_s, now)
        if new_api:
            from peakroute.domain.breaker import catch_up

            keys = set(rates) | set(channels) | await store.not_closed()
        else:
            keys = set(rates) | set(await store.all())
        held = await store.held_count(keys)

        def step(key: str, b: Breaker, rates: dict = rates, held: dict = held) -> Breaker:
            b = observe(b, rates.get(key, 0.0), now, cfg, held.get(key, 0))
            return take_tokens(b, now, cfg, held.get(key, 0))[0]

        if new_api:
            await store.evaluate(sorted(keys), lambda k, b, tick: replace(step(k, catch_up(b, tick, cfg)), tick=tick))
        else:
            await store.update_many(sorted(keys), step)
        tick_ms.append((time.perf_counter() - t) * 1000)
        slowest_ms.append(tick_ms[-1])
        t = time.perf_counter()
        await store.holding_keys(max_age_s=0)
        holding_ms.append((time.perf_counter() - t) * 1000)
    await store.close()
    await r.aclose()
    def median(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    return {"tick_ms": median(tick_ms), "slowest_ms": median(slowest_ms), "holding_ms": median(holding_ms),
            "keys": active + len(channels), "sharded": sharded}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skus", default="1000,10000,50000")
    ap.add_argument("--active", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--owners", default="1", help="comma-separated worker counts the shards are split over")
    ap.add_argument("--partitions", type=int, default=6, help="stock partitions = SKU shards")
    ap.add_argument("--tree", default=str(ROOT), help="checkout whose peakroute package is measured")
    ap.add_argument("--url", help=argparse.SUPPRESS)  # internal: run against this Redis, print one line
    args = ap.parse_args()
    if args.url:
        for n in (int(x) for x in args.skus.split(",")):
            for owners in (int(x) for x in args.owners.split(",")):
                out = asyncio.run(measure(args.url, n, args.active, args.rounds, owners, args.partitions))
                split = (f", {owners} workers: slowest {out['slowest_ms']:8.1f} ms" if out["sharded"]
                         else " (one leader: not sharded)")
                print(f"{n:>7} SKUs counted today, {args.active} in the window ({out['keys']} keys): "
                      f"tick {out['tick_ms']:8.1f} ms in all{split}; holding_keys {out['holding_ms']:7.1f} ms",
                      flush=True)
                if not out["sharded"]:
                    break
        return
    from peakroute.stack import ensure_redis_server, free_port

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen([ensure_redis_server(), "--port", str(port), "--save", "", "--appendonly", "no",
                                   "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            env = {**os.environ, "PYTHONPATH": args.tree}
            print(f"tree {args.tree}: median of {args.rounds} rounds")
            subprocess.run([sys.executable, __file__, "--url", f"redis://127.0.0.1:{port}/0", "--skus", args.skus,
                            "--active", str(args.active), "--rounds", str(args.rounds), "--tree", args.tree,
                            "--owners", args.owners, "--partitions", str(args.partitions)],
                           env=env, cwd=args.tree, check=True)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
