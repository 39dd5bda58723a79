"""The Redis projections written by one script call per batch (tables/redis_views.py,
tables/breaker_store.py) leave exactly what the per-command writes left, on a real redis-server."""

from __future__ import annotations

import asyncio

import redis

from peakroute.config import Settings
from peakroute.domain.breaker import shard_of
from peakroute.tables.breaker_store import KEYS, BreakerStore, rate_key
from peakroute.tables.redis_views import ORDER_TTL_S, RedisViews, capacity_key


def test_batch_scripts_write_what_the_commands_would(stack_settings: Settings) -> None:
    r = redis.Redis.from_url(stack_settings.redis_url)
    r.delete(*(r.keys("peakroute:*") or ["x"]))

    async def run() -> dict:
        views, breakers = RedisViews(stack_settings.redis_url), BreakerStore(stack_settings.redis_url, stack_settings.partitions)
        try:
            await views.publish_stock([("SKU-1", "WH-A", (10, 2, 1)), ("SKU-1", "WH-B", (5, 0, 0)),
                                       ("SKU-2", "WH-A", (3, 3, 0)), ("SKU-1", "WH-A", (10, 4, 1))])
            available = await views.available(["SKU-1", "SKU-2", "SKU-none", "SKU-1"])
            assert await views.available([]) == {}
            await views.claim_capacity_many([("WH-A", "o1"), ("WH-B", "o1"), ("WH-A", "o2"), ("WH-A", "o1")],
                                            day="2026-11-11")
            ids = [f"bulk-{i}" for i in range(2500)]  # more than one SADD's worth of values
            await views.claim_capacity_many([("WH-C", i) for i in ids], day="2026-11-11")
            await views.project_events([
                {"order_id": "tmall:1", "event": "accepted", "at": "2026-11-11T00:00:00.000Z", "channel": "tmall"},
                {"order_id": "tmall:1", "event": "routed", "at": "2026-11-11T00:00:01.000Z",
                 "warehouses": ["WH-A"]},
                {"order_id": "jd:2", "event": "backordered", "at": "2026-11-11T00:00:02.000Z", "reason": "no_stock"},
                {"order_id": "jd:3", "event": "held", "at": "2026-11-11T00:00:03.000Z",
                 "reason": '库存不足 "quoted" \\ \u0001 😀'},
            ])
            status = await views.order_status("tmall:1")
            held = await views.order_status("jd:3")
            assert held is not None and held["timeline"][0]["reason"] == '库存不足 "quoted" \\ \u0001 😀', \
                "text survives the JSON round trip through the script byte for byte"
            keys = [f"k{i}" for i in range(2300)]
            await breakers.count([("channel:tmall", 100), ("sku:SKU-1", 100), ("channel:tmall", 100),
                                  ("channel:tmall", 101), *((k, 100) for k in keys)])
            return {"available": available, "status": status, "rates": await breakers.rates(10, 102),
                    "rates_later": await breakers.rates(10, 111)}
        finally:
            await views.close()
            await breakers.close()

    out = asyncio.run(run())
    assert out["available"] == {("SKU-1", "WH-A"): 5, ("SKU-1", "WH-B"): 5, ("SKU-2", "WH-A"): 0}
    assert r.smembers(capacity_key("2026-11-11", "WH-A")) == {b"o1", b"o2"}
    assert r.smembers(capacity_key("2026-11-11", "WH-B")) == {b"o1"}
    assert r.scard(capacity_key("2026-11-11", "WH-C")) == 2500
    assert 0 < r.ttl(capacity_key("2026-11-11", "WH-A")) <= 3 * 24 * 3600
    assert r.ttl("peakroute:stock:SKU-1") == -1, "the stock view does not expire"
    order = r.hgetall("peakroute:order:tmall:1")
    assert order[b"status"] == b"routed" and order[b"channel"] == b"tmall"
    assert order[b"warehouses"] == b'["WH-A"]' and order[b"updated_at"] == b"2026-11-11T00:00:01.000Z"
    assert ORDER_TTL_S - 60 < r.ttl("peakroute:order:tmall:1") <= ORDER_TTL_S
    assert r.hget("peakroute:order:jd:2", "status") == b"backordered"
    assert [e["event"] for e in out["status"]["timeline"]] == ["accepted", "routed"]
    sku_shard = shard_of("sku:SKU-1", stack_settings.partitions)
    assert r.hget(rate_key(100, "c"), "channel:tmall") == b"2" and r.hget(rate_key(101, "c"), "channel:tmall") == b"1"
    assert r.hget(rate_key(100, sku_shard), "sku:SKU-1") == b"1" and 0 < r.ttl(rate_key(100, sku_shard)) <= 300
    assert r.hget(rate_key(100, "c"), "sku:SKU-1") is None, "each key is counted in its own shard's hash"
    assert r.scard(KEYS) == 2 + 2300
    assert out["rates"]["channel:tmall"] == 0.3 and out["rates"]["sku:SKU-1"] == 0.1
    assert len(out["rates"]) == 2 + 2300 and out["rates_later"] == {"channel:tmall": 0.1}, \
        "a key counted in none of the window's seconds is absent"



def test_breakers_updated_in_one_transaction_leave_what_one_update_per_key_leaves(stack_settings: Settings) -> None:
    """The tick's ``evaluate`` writes every key's change in one transaction; a breaker an
    operator writes while the tick decides is not overwritten with the tick's stale copy: the
    transaction fails and the whole tick is decided again on what is stored now (same tick number)."""
    from dataclasses import replace

    import orjson

    from peakroute.domain.breaker import Breaker
    from peakroute.tables.breaker_store import BREAKERS, NOT_CLOSED, NOT_CLOSED_BUILT, TICK, shard_key

    r = redis.Redis.from_url(stack_settings.redis_url)
    r.delete(BREAKERS, NOT_CLOSED, NOT_CLOSED_BUILT, TICK, *(r.keys("peakroute:breakers:shard:*") or ["x"]))
    calls: list[tuple[str, int]] = []

    def change(key: str, b: Breaker, tick: int) -> Breaker:
        if not calls:  # an operator trips channel:jd between the tick's read and its write (what update writes)
            r.hset(BREAKERS, "channel:jd", orjson.dumps(replace(Breaker("channel:jd"), state="open",
                                                                reason="operator").to_dict()))
            r.hincrby(shard_key("c"), "v", 1)
        calls.append((key, tick))
        return replace(b, ticks_seen=b.ticks_seen + 1, tick=tick)

    async def run() -> tuple[dict, dict]:
        breakers = BreakerStore(stack_settings.redis_url, stack_settings.partitions)
        try:
            await breakers.update("sku:A", lambda b: replace(b, baseline=5.0))
            first = await breakers.evaluate(["channel:jd", "sku:A", "sku:new"], change)
            second = await breakers.evaluate(["sku:A"], lambda k, b, tick: replace(b, tick=tick))
            return first, second
        finally:
            await breakers.close()

    out, second = asyncio.run(run())
    assert sorted(calls) == sorted([("channel:jd", 1), ("sku:A", 1), ("sku:new", 1)] * 2), \
        "decided again after the operator's write"
    assert out["channel:jd"].state == "open" and out["channel:jd"].reason == "operator", "the trip survives"
    assert out["sku:A"].baseline == 5.0 and out["sku:A"].ticks_seen == 1, "read, changed once, written"
    assert out["sku:new"].key == "sku:new" and out["sku:new"].ticks_seen == 1, "a key never seen starts fresh"
    assert second["sku:A"].tick == 2, "one number per tick that ran, not per try"
    stored = {k.decode(): Breaker.from_dict(orjson.loads(v)) for k, v in r.hgetall(BREAKERS).items()}
    assert stored == {**out, **second}, "a key not asked for is not touched"
    assert r.smembers(NOT_CLOSED) == {b"channel:jd"}, "the index follows what the tick wrote"


def test_the_not_closed_index_is_built_once_for_breakers_written_before_it(stack_settings: Settings) -> None:
    """An upgrade: breakers stored by a build without the index.  The first store call builds it from
    them; then holding breakers are found through it (no scan of every breaker), an operator's
    close takes a key out and a trip puts one in."""
    from dataclasses import replace

    import orjson

    from peakroute.domain.breaker import Breaker, close, trip
    from peakroute.tables.breaker_store import BREAKERS, NOT_CLOSED, NOT_CLOSED_BUILT

    r = redis.Redis.from_url(stack_settings.redis_url)
    r.delete(BREAKERS, NOT_CLOSED, NOT_CLOSED_BUILT)
    old = {"sku:open": replace(Breaker("sku:open"), state="open"), "sku:draining": replace(Breaker("sku:draining"),
           state="half_open"), **{f"sku:{i}": Breaker(f"sku:{i}") for i in range(3000)}}
    r.hset(BREAKERS, mapping={k: orjson.dumps(b.to_dict()) for k, b in old.items()})

    async def run() -> list[set[str]]:
        breakers = BreakerStore(stack_settings.redis_url, stack_settings.partitions)
        try:
            seen = [await breakers.holding_keys(max_age_s=0)]
            await breakers.update("sku:open", lambda b: close(b, 1.0))  # drains first: still holding
            await breakers.update("sku:draining", lambda b: replace(b, state="closed"))
            await breakers.update("sku:7", lambda b: trip(b, 1.0))
            seen.append(await breakers.holding_keys(max_age_s=0))
            return seen
        finally:
            await breakers.close()

    before, after = asyncio.run(run())
    assert before == {"sku:open", "sku:draining"}
    assert after == {"sku:open", "sku:7"} and r.smembers(NOT_CLOSED) == {b"sku:open", b"sku:7"}
    assert r.exists(NOT_CLOSED_BUILT)


def test_each_shard_of_the_breakers_is_ticked_on_its_own(stack_settings: Settings) -> None:
    """Every worker ticks the shards of the stock partitions it owns (agents/breaker.py): each shard
    numbers its own ticks (the first continues the single-leader layout's number), a shard ticked
    under ``min_interval_s`` ago is left out (two owners for a moment during a rebalance), a write
    into another shard does not make a tick decide again, and the rates are read per shard."""
    from dataclasses import replace

    import orjson

    from peakroute.domain.breaker import Breaker
    from peakroute.tables.breaker_store import BREAKERS, NOT_CLOSED, NOT_CLOSED_BUILT, TICK, shard_key

    n = stack_settings.partitions
    r = redis.Redis.from_url(stack_settings.redis_url)
    r.delete(BREAKERS, NOT_CLOSED, NOT_CLOSED_BUILT, TICK, *(r.keys("peakroute:breakers:shard:*") or ["x"]),
             *(r.keys("peakroute:rate:*") or ["x"]), *(r.keys("peakroute:held*") or ["x"]))
    r.set(TICK, 41)
    skus = [f"sku:S{i}" for i in range(50)]
    sku_a = skus[0]
    sku_b = next(k for k in skus if shard_of(k, n) != shard_of(sku_a, n))
    calls: list[str] = []

    def change(key: str, b: Breaker, tick: int) -> Breaker:
        if key == sku_a and not calls:  # an operator trips a channel (another shard) meanwhile
            r.hset(BREAKERS, "channel:jd", orjson.dumps(replace(Breaker("channel:jd"), state="open").to_dict()))
            r.hincrby(shard_key("c"), "v", 1)
            r.sadd(NOT_CLOSED, "channel:jd")
        calls.append(key)
        return replace(b, tick=tick)

    async def run() -> dict:
        store = BreakerStore(stack_settings.redis_url, n)
        try:
            out = {"first": await store.evaluate([sku_a], change, now=1000.0, min_interval_s=0.5)}
            out["soon"] = await store.evaluate([sku_a], change, now=1000.2, min_interval_s=0.5)
            out["later"] = await store.evaluate([sku_a, sku_b, "channel:tmall"], change, now=1001.0,
                                                min_interval_s=0.5)
            out["idle"] = await store.evaluate([], change, shards=[shard_of(sku_b, n)], now=1002.0)
            try:
                await store.evaluate([sku_a], change, shards=[shard_of(sku_b, n)], now=1003.0)
                out["outside"] = "evaluated"
            except ValueError as exc:
                out["outside"] = str(exc)
            await store.count([("channel:tmall", 100), (sku_a, 100), (sku_b, 100), (sku_b, 101)])
            out["rates_a"] = await store.rates(10, 102, shards=[shard_of(sku_a, n)])
            out["rates_all"] = await store.rates(10, 102)
            await store.hold([{"key": sku_b, "order_id": f"o{i}", "partition": 0, "held_at": i} for i in range(3)])
            out["held"] = await store.held_count([sku_a, sku_b])
            out["held_none"] = await store.held_count([])
            out["not_closed_c"] = await store.not_closed(["c"])
            out["not_closed_a"] = await store.not_closed([shard_of(sku_a, n)])
            return out
        finally:
            await store.close()

    out = asyncio.run(run())
    assert calls[0] == sku_a and calls.count(sku_a) == 2, "decided once per tick that ran, not again for another shard's write"
    assert out["first"][sku_a].tick == 42, "a shard's first tick continues the single-leader number"
    assert out["soon"] == {}, "a shard ticked 0.2 s ago (by its other owner) is left out"
    assert out["later"][sku_a].tick == 43 and out["later"][sku_b].tick == 42 and out["later"]["channel:tmall"].tick == 42
    assert r.hget(shard_key(shard_of(sku_a, n)), "tick") == b"43"
    assert out["idle"] == {} and r.hget(shard_key(shard_of(sku_b, n)), "tick") == b"43", \
        "a shard ticked with no key to evaluate counts the tick (its idle keys decay when next counted)"
    assert "not in the shards ticked" in out["outside"], "a key of a shard not being ticked is refused"
    assert out["rates_a"] == {sku_a: 0.1}, "only the asked shards' keys"
    assert out["rates_all"] == {"channel:tmall": 0.1, sku_a: 0.1, sku_b: 0.2}
    assert out["held"] == {sku_a: 0, sku_b: 3} and out["held_none"] == {}
    assert out["not_closed_c"] == {"channel:jd"} and out["not_closed_a"] == set()
