"""Breaker state, surge counters and held orders in Redis — shared by every worker and the api.

Why Redis: a channel's orders are spread over every partition and worker, so its rate must be
counted globally, and the breaker's state must be the same for all of them and survive a worker
restart.  Redis is the one place every process already talks to (documented in README).

The breakers are split in *shards* (``domain.breaker.shard_of``): a SKU's goes with the partition
that owns the SKU's stock, a channel's in shard ``c``.  Each worker evaluates the shards of the
stock partitions it owns (the leader also ``c``), so the once-a-second tick is spread over the
workers like the SKUs are, instead of one leader evaluating every active SKU.

- ``peakroute:rate:<epoch second>:<shard>`` hash key → orders counted in that second (expires after 5 min)
- ``peakroute:breaker:keys``               set of keys ever counted
- ``peakroute:breakers``                   hash key → breaker JSON (every shard: one place to read)
- ``peakroute:breakers:shard:<shard>``     hash: ``tick`` (number of the shard's last evaluation),
                                           ``at`` (its epoch time), ``v`` (writes); every write of
                                           a breaker changes it, and every writer WATCHes the shards
                                           it reads — optimistic, per shard, not per hash
- ``peakroute:breakers:not-closed``        set of the keys whose breaker is open or half-open (kept
                                           in the same transactions; ``…:indexed`` marks it built)
- ``peakroute:breaker:tick``               the last tick number of the single-leader layout (before
                                           shards): a shard's first tick continues from it
- ``peakroute:held:<key>``                 sorted set "partition|order_id" by hold time
- ``peakroute:held-orders``                hash order_id → JSON (key, partition, held_at, channel, skus)

Held orders are also remembered in the worker's ``order-state`` table, so Redis losing these keys
never loses an order: the workers put their held orders back (``repair``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from ..domain.breaker import Breaker, shard_of

BREAKERS = "peakroute:breakers"
KEYS = "peakroute:breaker:keys"
HELD_ORDERS = "peakroute:held-orders"
NOT_CLOSED = "peakroute:breakers:not-closed"
NOT_CLOSED_BUILT = "peakroute:breakers:not-closed:indexed"
TICK = "peakroute:breaker:tick"


def rate_key(second: int, shard: str) -> str:
    """The hash of one second's counts of one shard, key → orders: a tick reads its window's ten
    hashes of each shard it evaluates, so it costs what was counted there, not every key ever
    counted times the window, nor the other workers' keys."""
    return f"peakroute:rate:{second}:{shard}"


def shard_key(shard: str) -> str:
    return f"peakroute:breakers:shard:{shard}"


def held_key(key: str) -> str:
    return f"peakroute:held:{key}"


#: A batch's counters in one script call (one request, one reply; see redis_views._HSET_JSON):
#: KEYS = the keys set, then one second's hash per counter; ARGV = ttl, then a (key, increment)
#: pair per counter, then the breaker keys to add to the set.
_COUNT = """
local ttl, n = ARGV[1], #KEYS - 1
for i = 1, n do
  redis.call('HINCRBY', KEYS[i + 1], ARGV[2 * i], ARGV[2 * i + 1])
  redis.call('EXPIRE', KEYS[i + 1], ttl)
end
for first = 2 * n + 2, #ARGV, 1000 do  -- unpack is limited to a few thousand values
  redis.call('SADD', KEYS[1], unpack(ARGV, first, math.min(first + 999, #ARGV)))
end
return n
"""

#: The held counts of many keys in one request: KEYS = their held sets.
_ZCARDS = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('ZCARD', KEYS[i]) end
return out
"""


def _note_not_closed(pipe: Any, breakers: dict[str, Breaker]) -> None:
    """Keep the not-closed index in step with breakers being written (inside their transaction)."""
    holding = [k for k, b in breakers.items() if b.holding]
    closed = [k for k, b in breakers.items() if not b.holding]
    if holding:
        pipe.sadd(NOT_CLOSED, *holding)
    if closed:
        pipe.srem(NOT_CLOSED, *closed)


class BreakerStore:
    """``partitions``: of the stock topics (``Settings.partitions``); it decides each SKU key's
    shard, so every process that counts or writes breakers must use the workers' value."""

    def __init__(self, redis_url: str, partitions: int) -> None:
        self.redis = aioredis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.partitions = partitions
        self._holding: tuple[float, set[str]] = (0.0, set())
        self._indexed = False
        self._count = self.redis.register_script(_COUNT)
        self._zcards = self.redis.register_script(_ZCARDS)

    def shard(self, key: str) -> str:
        return shard_of(key, self.partitions)

    def all_shards(self) -> list[str]:
        return [*(str(p) for p in range(self.partitions)), "c"]

    async def close(self) -> None:
        await self.redis.aclose()

    # -- counting --------------------------------------------------------------------------------
    async def count(self, keys: Iterable[tuple[str, int]]) -> None:
        """Add orders to their keys' counters: (key, epoch second the order was ingested).

        Counting by ingest time, not processing time, keeps a backlog (a worker catching up after a
        restart) from looking like a surge.
        """
        counts = Counter(keys)
        if not counts:
            return
        # One HINCRBY per key and second per batch, all in one script call.
        args: list[Any] = [300]
        for (k, _sec), n in counts.items():
            args += (k, n)
        await self._count(keys=[KEYS, *(rate_key(sec, self.shard(k)) for k, sec in counts)],
                          args=[*args, *{k for k, _ in counts}])

    async def rates(self, window_s: int, now: float | None = None,
                    shards: Iterable[str] | None = None) -> dict[str, float]:
        """Orders/s per key over the last ``window_s`` complete seconds, for the keys of ``shards``
        (default: all) counted in them (a key absent had none)."""
        end = int(time.time() if now is None else now)
        pipe = self.redis.pipeline(transaction=False)
        for shard in self.all_shards() if shards is None else shards:
            for second in range(end - window_s, end):
                pipe.hgetall(rate_key(second, shard))
        totals: Counter[bytes] = Counter()
        for counts in await pipe.execute():
            for k, n in counts.items():
                totals[k] += int(n)
        return {k.decode(): n / window_s for k, n in totals.items()}

    # -- breakers --------------------------------------------------------------------------------
    async def all(self) -> dict[str, Breaker]:
        raw = await self.redis.hgetall(BREAKERS)
        return {k.decode(): Breaker.from_dict(orjson.loads(v)) for k, v in raw.items()}

    async def get(self, key: str) -> Breaker | None:
        raw = await self.redis.hget(BREAKERS, key)
        return Breaker.from_dict(orjson.loads(raw)) if raw else None

    async def update(self, key: str, change: Callable[[Breaker], Breaker]) -> Breaker:
        """Read-modify-write one breaker atomically (optimistic: WATCH its shard, MULTI, retried)."""
        await self._index_not_closed()
        shard = shard_key(self.shard(key))
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(shard)
                    raw = await pipe.hget(BREAKERS, key)
                    current = Breaker.from_dict(orjson.loads(raw)) if raw else Breaker(key)
                    new = change(current)
                    pipe.multi()
                    pipe.hset(BREAKERS, key, orjson.dumps(new.to_dict()))
                    pipe.hincrby(shard, "v", 1)
                    _note_not_closed(pipe, {key: new})
                    await pipe.execute()
                    return new
                except WatchError:
                    continue

    async def evaluate(self, keys: Iterable[str], change: Callable[[str, Breaker, int], Breaker], *,
                       shards: Iterable[str] | None = None, now: float | None = None,
                       min_interval_s: float = 0.0) -> dict[str, Breaker]:
        """One evaluation tick of ``shards`` (default: those of ``keys``): read-modify-write the
        breakers of ``keys`` in one optimistic transaction (retried whole if anyone — an
        operator's call, another worker's tick — wrote one of those shards meanwhile), numbering
        each shard's tick: ``change(key, breaker, tick)``.  Every shard given is numbered, those
        with no key to evaluate too: their idle keys' ticks are counted (``catch_up``).  A shard
        evaluated less than ``min_interval_s`` ago is left out (its keys are not in the result):
        while a rebalance moves a partition, its old and its new owner may both tick it for a
        moment, and a breaker must not see two ticks a second (its baseline would decay twice as
        fast).

        Why one transaction and only ``keys``: the tick used to take three round trips per key,
        then one HGETALL of every breaker ever counted — both grow with the catalog; the caller
        passes the keys counted in the window, the channels and the breakers not closed, and
        :func:`~peakroute.domain.breaker.catch_up` accounts for the ticks a key sat out.
        ``change`` is called again for every key on a retry: what it records must be overwritten,
        not added up."""
        now = time.time() if now is None else now
        by_shard: dict[str, list[str]] = {s: [] for s in shards or ()}
        for key in keys:
            shard = self.shard(key)
            if shards is not None and shard not in by_shard:
                raise ValueError(f"{key} is in shard {shard}, not in the shards ticked {sorted(by_shard)}")
            by_shard.setdefault(shard, []).append(key)
        if not by_shard:
            return {}
        await self._index_not_closed()
        shards = sorted(by_shard)
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(*(shard_key(s) for s in shards))
                    metas = [await pipe.hmget(shard_key(s), "tick", "at") for s in shards]
                    legacy = int(await pipe.get(TICK) or 0) if any(t is None for t, _ in metas) else 0
                    due = {s: int(t) + 1 if t is not None else legacy + 1
                           for s, (t, at) in zip(shards, metas, strict=True)
                           if at is None or now - float(at) >= min_interval_s}
                    todo = [(k, tick) for s, tick in due.items() for k in by_shard[s]]
                    raws = await pipe.hmget(BREAKERS, [k for k, _ in todo]) if todo else []
                    new = {}
                    for (key, tick), raw in zip(todo, raws, strict=True):
                        b = Breaker.from_dict(orjson.loads(raw)) if raw else Breaker(key)
                        new[key] = change(key, b, tick)
                    pipe.multi()
                    for s, tick in due.items():
                        pipe.hset(shard_key(s), mapping={"tick": tick, "at": repr(now)})
                        pipe.hincrby(shard_key(s), "v", 1)
                    if new:
                        pipe.hset(BREAKERS, mapping={k: orjson.dumps(b.to_dict()) for k, b in new.items()})
                        _note_not_closed(pipe, new)
                    await pipe.execute()
                    return new
                except WatchError:
                    continue

    async def not_closed(self, shards: Iterable[str] | None = None) -> set[str]:
        """Keys whose breaker is open or half-open (from the index: no scan of every breaker), of
        ``shards`` (default: all)."""
        await self._index_not_closed()
        keys = {k.decode() for k in await self.redis.smembers(NOT_CLOSED)}
        if shards is None:
            return keys
        wanted = set(shards)
        return {k for k in keys if self.shard(k) in wanted}

    async def _index_not_closed(self) -> None:
        """Build the not-closed index once for a Redis whose breakers were written before it
        existed (an upgrade): in a transaction, so no breaker changes between the scan and the index."""
        if self._indexed:
            return
        while not await self.redis.exists(NOT_CLOSED_BUILT):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(BREAKERS, NOT_CLOSED_BUILT)
                    if await pipe.exists(NOT_CLOSED_BUILT):
                        break
                    raw = await pipe.hgetall(BREAKERS)
                    breakers = {k.decode(): Breaker.from_dict(orjson.loads(v)) for k, v in raw.items()}
                    pipe.multi()
                    _note_not_closed(pipe, breakers)
                    pipe.set(NOT_CLOSED_BUILT, 1)
                    await pipe.execute()
                except WatchError:
                    continue
        self._indexed = True

    async def holding_keys(self, max_age_s: float = 0.5) -> set[str]:
        """Keys whose breaker holds new orders (cached briefly: checked for every order)."""
        at, keys = self._holding
        if time.monotonic() - at > max_age_s:
            candidates = sorted(await self.not_closed())
            raws = await self.redis.hmget(BREAKERS, candidates) if candidates else []
            keys = {k for k, raw in zip(candidates, raws, strict=True) if raw and Breaker.from_dict(orjson.loads(raw)).holding}
            self._holding = (time.monotonic(), keys)
        return keys

    # -- held orders -----------------------------------------------------------------------------
    async def hold(self, entries: list[dict[str, Any]]) -> None:
        """Remember held orders: each entry has key, order_id, partition, held_at (+ display fields)."""
        if not entries:
            return
        pipe = self.redis.pipeline(transaction=False)
        for e in entries:
            pipe.zadd(held_key(e["key"]), {f"{e['partition']}|{e['order_id']}": e["held_at"]}, nx=True)
            pipe.hsetnx(HELD_ORDERS, e["order_id"], orjson.dumps(e))
        await pipe.execute()

    async def take(self, key: str, n: int) -> list[tuple[int, str]]:
        """Pop the ``n`` longest-held orders of ``key``: (partition, order_id)."""
        if n <= 0:
            return []
        popped = await self.redis.zpopmin(held_key(key), n)
        out = []
        for member, _ in popped:
            p, oid = member.decode().split("|", 1)
            out.append((int(p), oid))
        if out:
            await self.redis.hdel(HELD_ORDERS, *[oid for _, oid in out])
        return out

    async def unhold(self, order_id: str) -> dict | None:
        """Remove one held order (approved, rejected or cancelled); its entry, or None if not held."""
        raw = await self.redis.hget(HELD_ORDERS, order_id)
        if not raw:
            return None
        entry = orjson.loads(raw)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(held_key(entry["key"]), f"{entry['partition']}|{order_id}")
        pipe.hdel(HELD_ORDERS, order_id)
        removed, _ = await pipe.execute()
        return entry if removed else None

    async def held_count(self, keys: Iterable[str]) -> dict[str, int]:
        """Orders held per key, in one request (a tick asks for every key it evaluates: one
        pipelined ZCARD each cost ~a third of a 10,000-key tick in redis-py's command packing)."""
        keys = list(keys)
        if not keys:
            return {}
        counts = await self._zcards(keys=[held_key(k) for k in keys])
        return dict(zip(keys, (int(n) for n in counts), strict=True))

    async def is_held(self, order_ids: list[str]) -> list[bool]:
        if not order_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for oid in order_ids:
            pipe.hexists(HELD_ORDERS, oid)
        return [bool(x) for x in await pipe.execute()]

    async def held_page(self, offset: int, limit: int, key: str | None = None) -> tuple[int, list[dict]]:
        """(total, entries) of held orders, oldest first."""
        if key:
            total = await self.redis.zcard(held_key(key))
            members = await self.redis.zrange(held_key(key), offset, offset + limit - 1)
            ids = [m.decode().split("|", 1)[1] for m in members]
            raws = await self.redis.hmget(HELD_ORDERS, ids) if ids else []
            return total, [orjson.loads(r) for r in raws if r]
        total = await self.redis.hlen(HELD_ORDERS)
        entries = [orjson.loads(v) for v in (await self.redis.hgetall(HELD_ORDERS)).values()]
        entries.sort(key=lambda e: (e["held_at"], e["order_id"]))
        return total, entries[offset:offset + limit]
