"""Read-only projections in Redis, shared by every worker and the api.

- ``peakroute:stock:<sku>`` hash, field = warehouse, value = "on_hand reserved safety": written by
  the SKU's owner after each batch; read by order planners (to pick a warehouse) and ``GET /stock``.
  A projection, never the truth: the SKU owner's table decides every reservation, so a stale view
  costs a re-plan, never an oversell.
- ``peakroute:capacity:<yyyy-mm-dd>:<warehouse>`` set of order ids routed there that day (SADD is
  idempotent under re-delivery; SCARD is the count).
- ``peakroute:order:<order_id>`` hash: status, warehouses, … and one ``ev:…`` field per distinct
  event — the "where is my order?" projection of ``peakroute.order-events``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import redis.asyncio as aioredis

log = logging.getLogger("peakroute.views")
BEIJING = timezone(timedelta(hours=8))
#: Used when Redis cannot be read: plan optimistically, the SKU owner still decides.
UNKNOWN_AVAILABLE = 1 << 30
ORDER_TTL_S = 30 * 24 * 3600


def stock_key(sku: str) -> str:
    return f"peakroute:stock:{sku}"


def capacity_key(day: str, warehouse: str) -> str:
    return f"peakroute:capacity:{day}:{warehouse}"


def business_day(now: float | None = None) -> str:
    """Warehouses count capacity per Beijing calendar day."""
    return datetime.fromtimestamp(time.time() if now is None else now, BEIJING).strftime("%Y-%m-%d")


#: A batch's writes as one server-side script call: one request and one reply per batch instead of
#: one (pure-Python packed and parsed, each under its own timeout) per command — a worker
#: sends a few Redis commands per order, and they were ~8% of its event loop.  Single-node Redis
#: (or keys of one hash slot): a script may only touch keys of one node.
#:
#: HSET each key with its fields, given as one JSON object per key (ARGV[2] = a JSON array aligned
#: with KEYS: redis-py packs every argument of a command in Python, and an order's projection has
#: ~10 fields), then EXPIRE it after ARGV[1] seconds unless ARGV[1] is empty.
_HSET_JSON = """
local ttl, docs = ARGV[1], cjson.decode(ARGV[2])
for i, key in ipairs(KEYS) do
  local args = {}
  for f, v in pairs(docs[i]) do args[#args + 1] = f; args[#args + 1] = v end
  redis.call('HSET', key, unpack(args))
  if ttl ~= '' then redis.call('EXPIRE', key, ttl) end
end
return #KEYS
"""
#: SADD to each key its members (ARGV[2..] = count, members…, per key) and EXPIRE it (ARGV[1] s).
_SADD_EACH = """
local ttl, j = ARGV[1], 2
for _, key in ipairs(KEYS) do
  local n = tonumber(ARGV[j])
  for first = j + 1, j + n, 1000 do  -- unpack is limited to a few thousand values
    redis.call('SADD', key, unpack(ARGV, first, math.min(first + 999, j + n)))
  end
  redis.call('EXPIRE', key, ttl)
  j = j + 1 + n
end
return #KEYS
"""
#: HGETALL of each key, as a list of [field, value, …] lists aligned with KEYS.
_HGETALL_EACH = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGETALL', key) end
return out
"""


class RedisViews:
    def __init__(self, redis_url: str) -> None:
        self.redis = aioredis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._capacity_cache: dict[str, tuple[float, int]] = {}
        self._hset_json = self.redis.register_script(_HSET_JSON)
        self._sadd_each = self.redis.register_script(_SADD_EACH)
        self._hgetall_each = self.redis.register_script(_HGETALL_EACH)

    async def close(self) -> None:
        await self.redis.aclose()

    # -- stock ---------------------------------------------------------------------------------
    async def publish_stock(self, levels: Iterable[tuple[str, str, tuple[int, int, int]]]) -> None:
        groups: dict[str, dict[str, Any]] = {}
        for sku, wh, (on_hand, reserved, safety) in levels:
            groups.setdefault(stock_key(sku), {})[wh] = f"{on_hand} {reserved} {safety}"
        if groups:
            await self._hset_json(keys=list(groups), args=["", orjson.dumps(list(groups.values()))])

    async def available(self, skus: Iterable[str]) -> dict[tuple[str, str], int]:
        """(sku, warehouse) → units available per the view; missing pairs mean 0."""
        skus = list(dict.fromkeys(skus))
        out: dict[tuple[str, str], int] = {}
        if not skus:
            return out
        replies = await self._hgetall_each(keys=[stock_key(sku) for sku in skus])
        for sku, flat in zip(skus, replies, strict=True):
            for i in range(0, len(flat), 2):  # a script returns HGETALL as [field, value, …]
                on_hand, reserved, safety = (int(x) for x in flat[i + 1].split())
                out[(sku, flat[i].decode())] = on_hand - reserved - safety
        return out

    async def stock_of(self, sku: str) -> dict[str, dict[str, int]]:
        fields = await self.redis.hgetall(stock_key(sku))
        out = {}
        for wh, val in sorted(fields.items()):
            on_hand, reserved, safety = (int(x) for x in val.split())
            out[wh.decode()] = {"on_hand": on_hand, "reserved": reserved, "safety_stock": safety,
                                "available": on_hand - reserved - safety}
        return out

    # -- capacity ------------------------------------------------------------------------------
    async def claim_capacity_many(self, claims: list[tuple[str, str]], day: str | None = None) -> None:
        """Count each (warehouse, order_id) routed today, idempotently, in one round trip."""
        day = day or business_day()
        members: dict[str, list[str]] = {}
        for wh, order_id in claims:
            members.setdefault(capacity_key(day, wh), []).append(order_id)
        if not members:
            return
        args: list[Any] = [3 * 24 * 3600]
        for ids in members.values():
            args += (len(ids), *ids)
        await self._sadd_each(keys=list(members), args=args)

    async def capacity_used(self, warehouses: Iterable[str], max_age_s: float = 1.0) -> dict[str, int]:
        """Orders routed today per warehouse (cached for ``max_age_s``: capacity is a soft limit)."""
        now = time.monotonic()
        day = business_day()
        stale = [w for w in warehouses if now - self._capacity_cache.get(w, (0.0, 0))[0] > max_age_s]
        if stale:
            pipe = self.redis.pipeline(transaction=False)
            for w in stale:
                pipe.scard(capacity_key(day, w))
            for w, n in zip(stale, await pipe.execute(), strict=True):
                self._capacity_cache[w] = (now, int(n))
        return {w: self._capacity_cache.get(w, (0.0, 0))[1] for w in warehouses}

    # -- order status --------------------------------------------------------------------------
    async def project_events(self, events: list[dict[str, Any]]) -> None:
        """One HSET + EXPIRE per order, one script call per batch: status fields, plus one ``ev:<event|attempt|line|reason>``
        field per distinct event (re-delivered events overwrite themselves: idempotent)."""
        per_order: dict[str, dict[str, Any]] = {}
        for ev in events:
            oid = ev["order_id"]
            fields = per_order.setdefault(oid, {"order_id": oid})
            fields["updated_at"] = ev["at"]
            status = EVENT_STATUS.get(ev["event"])
            if status:
                fields["status"] = status
            if ev.get("warehouses"):
                fields["warehouses"] = orjson.dumps(ev["warehouses"]).decode()
            if ev.get("channel"):
                fields["channel"] = ev["channel"]
            ident = f"{ev['event']}|{ev.get('attempt', '')}|{ev.get('line_id', '')}|{ev.get('reason', '')}"
            fields["ev:" + ident] = orjson.dumps(ev).decode()
        if not per_order:
            return
        await self._hset_json(keys=[f"peakroute:order:{oid}" for oid in per_order],
                              args=[ORDER_TTL_S, orjson.dumps(list(per_order.values()))])

    async def order_status(self, order_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hgetall(f"peakroute:order:{order_id}")
        if not raw:
            return None
        doc: dict[str, Any] = {}
        timeline = []
        for k, v in raw.items():
            name = k.decode()
            if name.startswith("ev:"):
                timeline.append(orjson.loads(v))
            else:
                doc[name] = v.decode()
        if "warehouses" in doc:
            doc["warehouses"] = orjson.loads(doc["warehouses"])
        doc["timeline"] = sorted(timeline, key=lambda e: (e["at"], LIFECYCLE.get(e["event"], 5)))
        return doc


#: Order of events that share a timestamp (one transition can emit several).
LIFECYCLE = {"accepted": 0, "held": 1, "on_hold": 1, "released_from_review": 2, "reservation_conflict": 3,
             "released": 3, "reserved": 4, "routed": 5, "split": 5, "backordered": 5, "oversold": 6,
             "reservation_lost": 6,
             "cancelled": 7, "line_shipped": 8, "shipped": 9}

#: Order event → the status "where is my order?" shows.
EVENT_STATUS = {
    "accepted": "accepted", "on_hold": "on_hold", "reserved": "reserved", "routed": "routed",
    "split": "routed_split", "backordered": "backordered", "cancelled": "cancelled", "released": None,
    "reservation_conflict": None, "oversold": "oversold_rerouting",
    "reservation_lost": "rerouting", "line_shipped": "partly_shipped",
    "shipped": "shipped", "channel_shipped": None, "channel_completed": None, "held": "held_for_review",
}
