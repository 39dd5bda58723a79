"""The Redis projections written by one script call per batch (tables/redis_views.py,
tables/breaker_store.py) leave exactly what the per-command writes left, on a real redis-server."""

from __future__ import annotations

import asyncio

import redis

from peakroute.config import Settings
from peakroute.tables.breaker_store import KEYS, BreakerStore, rate_key
from peakroute.tables.redis_views import ORDER_TTL_S, RedisViews, capacity_key


def test_batch_scripts_write_what_the_commands_would(stack_settings: Settings) -> None:
    r = redis.Redis.from_url(stack_settings.redis_url)
    r.delete(*(r.keys("peakroute:*") or ["x"]))

    async def run() -> dict:
        views, breakers = RedisViews(stack_settings.redis_url), BreakerStore(stack_settings.redis_url)
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
            return {"available": available, "status": status}
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
    assert r.get(rate_key("channel:tmall", 100)) == b"2" and r.get(rate_key("channel:tmall", 101)) == b"1"
    assert r.get(rate_key("sku:SKU-1", 100)) == b"1" and 0 < r.ttl(rate_key("sku:SKU-1", 100)) <= 300
    assert r.scard(KEYS) == 2 + 2300



def test_breakers_updated_in_one_transaction_leave_what_one_update_per_key_leaves(stack_settings: Settings) -> None:
    """The tick's ``update_many`` writes every key's change in one transaction; a breaker an
    operator writes while the tick decides is not overwritten with the tick's stale copy: the
    transaction fails and the whole tick is decided again on what is stored now."""
    from dataclasses import replace

    import orjson

    from peakroute.domain.breaker import Breaker
    from peakroute.tables.breaker_store import BREAKERS

    r = redis.Redis.from_url(stack_settings.redis_url)
    r.delete(BREAKERS)
    calls: list[str] = []

    def change(key: str, b: Breaker) -> Breaker:
        if not calls:  # an operator trips channel:jd between the tick's read and its write
            r.hset(BREAKERS, "channel:jd", orjson.dumps(replace(Breaker("channel:jd"), state="open",
                                                                reason="operator").to_dict()))
        calls.append(key)
        return replace(b, ticks_seen=b.ticks_seen + 1)

    async def run() -> dict:
        breakers = BreakerStore(stack_settings.redis_url)
        try:
            await breakers.update("sku:A", lambda b: replace(b, baseline=5.0))
            return await breakers.update_many(["channel:jd", "sku:A", "sku:new"], change)
        finally:
            await breakers.close()

    out = asyncio.run(run())
    assert calls == ["channel:jd", "sku:A", "sku:new"] * 2, "decided again after the operator's write"
    assert out["channel:jd"].state == "open" and out["channel:jd"].reason == "operator", "the trip survives"
    assert out["sku:A"].baseline == 5.0 and out["sku:A"].ticks_seen == 1, "read, changed once, written"
    assert out["sku:new"].key == "sku:new" and out["sku:new"].ticks_seen == 1, "a key never seen starts fresh"
    stored = {k.decode(): Breaker.from_dict(orjson.loads(v)) for k, v in r.hgetall(BREAKERS).items()}
    assert stored == out
