"""Surge breaker plumbing: the evaluation tick and the held-order repair (every worker).

The breaker decisions are the pure functions of ``domain/breaker.py``; this module reads the global
counters from Redis, moves each breaker's state machine once per tick, and releases held orders
at the drain rate by sending a ``release`` control message to each order's partition, where the
fulfillment agent reserves and routes it like any other order.

Each worker ticks the breakers of its own shards (``tables/breaker_store.py``): the SKU keys whose
stock partitions it owns, and the leader the channels.  One leader ticking every active SKU cost
~65 µs of its event loop per SKU (``benchmarks/breaker_tick.py``): 0.65 s a second at 10,000
active SKUs, on the worker that also routes orders.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust

from ..config import CHANNELS
from ..domain.breaker import HALF_OPEN, Breaker, BreakerConfig, advance
from ..domain.fulfillment import HELD, Watchlist
from ..metrics import registry as m
from ..streams.codecs import dumps
from ..tables.breaker_store import BreakerStore
from .common import by_partition

log = logging.getLogger("peakroute.breaker")
STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}
CHANNEL_KEYS = {f"channel:{c}" for c in CHANNELS}


def owned_shards(app: faust.App, stock_ops_topic: str) -> list[str]:
    """The breaker shards this worker ticks: its stock partitions', and the channels' on the leader."""
    try:
        shards = sorted(str(tp.partition) for tp in app.assignor.assigned_actives() if tp.topic == stock_ops_topic)
    except Exception:  # noqa: BLE001 - not assigned yet
        shards = []
    if app.is_leader():
        shards.append("c")
    return shards


async def tick_inputs(store: BreakerStore, shards: list[str], window_s: int,
                      now: float) -> tuple[dict[str, float], set[str], dict[str, int]]:
    """What one tick of ``shards`` evaluates: the keys' rates over the window, the keys (those
    counted in the window, the breakers not closed, and with shard ``c`` every channel — its
    gauges go to 0 when it is idle; an idle SKU is caught up when it is next counted) and how
    many orders each holds."""
    rates = await store.rates(window_s, now, shards)
    keys = set(rates) | await store.not_closed(shards)
    if "c" in shards:
        keys |= CHANNEL_KEYS
    return rates, keys, await store.held_count(keys)


def register(app: faust.App, *, replies: faust.TopicT, state_table: Any, store: BreakerStore,
             cfg: BreakerConfig, watch: Watchlist, stock_ops_topic: str) -> None:
    trips_seen: dict[str, int] = {}
    states_seen: dict[str, str] = {}  # last state this worker saw, to log transitions
    gauged: set[str] = set()  # keys whose gauges this worker has set

    @app.timer(interval=cfg.tick_s, on_leader=False)
    async def evaluate_breakers() -> None:
        """One tick of this worker's shards: rates over the window → state machines → drain what
        the token buckets allow."""
        now = time.time()
        shards = owned_shards(app, stock_ops_topic)
        for key in [k for k in gauged if store.shard(k) not in shards]:
            # Its shard moved to another worker, which exports it now: no stale series here.
            gauged.discard(key)
            for gauge in (m.BREAKER_STATE, m.BREAKER_RATE, m.BREAKER_BASELINE, m.HELD_ORDERS, m.BREAKER_DRAIN_RATE):
                gauge.remove(key)
        if not shards:
            return
        try:
            rates, keys, held = await tick_inputs(store, shards, cfg.window_s, now)
            releases: list[tuple[int, dict]] = []
            to_release: dict[str, int] = {}

            def change(key: str, b: Breaker, tick: int) -> Breaker:
                # Called again for every key if the transaction is retried: to_release is overwritten.
                b, to_release[key] = advance(b, tick, rates.get(key, 0.0), now, cfg, held.get(key, 0))
                return b

            # A shard another worker ticked under half a tick ago (both own it during a rebalance)
            # is left out of ``evaluated``.
            evaluated = await store.evaluate(sorted(keys), change, shards=shards, now=now,
                                             min_interval_s=cfg.tick_s / 2)
            for key, b in evaluated.items():
                n_release = to_release[key]
                if states_seen.get(key, b.state) != b.state:
                    log.warning("breaker %s: %s -> %s (rate %.1f/s, baseline %.1f/s, %d held)", key,
                                states_seen[key], b.state, b.rate, b.baseline, held.get(key, 0) - n_release)
                states_seen[key] = b.state
                for partition, oid in await store.take(key, n_release):
                    releases.append((partition, {"outcome": "release", "order_id": oid, "by": "breaker_drain",
                                                     "breaker": key}))
                if n_release:
                    m.BREAKER_DRAINED.labels(key).inc(n_release)
                if key in trips_seen and b.trips > trips_seen[key]:
                    log.warning("breaker %s tripped: %s", key, b.reason)
                    m.BREAKER_TRIPS.labels(key).inc(b.trips - trips_seen[key])
                trips_seen[key] = b.trips
                if key.startswith("channel:") or b.trips or b.state != "closed":
                    gauged.add(key)
                    m.BREAKER_STATE.labels(key).set(STATE_VALUE[b.state])
                    m.BREAKER_RATE.labels(key).set(b.rate)
                    m.BREAKER_BASELINE.labels(key).set(b.baseline)
                    m.HELD_ORDERS.labels(key).set(max(0, held.get(key, 0) - n_release))
                    if b.state == HALF_OPEN:
                        m.BREAKER_DRAIN_RATE.labels(key).set(b.effective_drain_rate(cfg))
            skipped = {store.shard(k) for k in keys if k not in evaluated}  # ticked elsewhere just now
            for key in gauged - evaluated.keys():
                if store.shard(key) in skipped:
                    continue
                # Not observed this tick: a closed breaker whose key had no orders in the window
                # (its baseline's decay is caught up when it is next counted).
                m.BREAKER_RATE.labels(key).set(0.0)
                m.HELD_ORDERS.labels(key).set(0)
            for partition, batch in by_partition(releases).items():
                await replies.send(key=None, value=dumps({"replies": batch}), partition=partition)
        except Exception as exc:  # noqa: BLE001 - Redis away: the breaker pauses, nothing is lost
            log.warning("breaker tick skipped: %r", exc)

    @app.timer(interval=10.0, on_leader=False)
    async def repair_held_orders() -> None:
        """Held orders live in this worker's table; put any that Redis forgot back under their
        breaker, or release them if that breaker no longer holds."""
        try:
            if not watch.ensure(state_table, in_recovery=app.in_recovery, now=time.monotonic()):
                return
            held = [(oid, st) for oid in list(watch.held) if (st := state_table.get(oid)) and st.get("status") == HELD]
            if not held:
                return
            known = await store.is_held([oid for oid, _ in held])
            holding = await store.holding_keys(max_age_s=0)
            lost = [(oid, st) for (oid, st), ok in zip(held, known, strict=True) if not ok]
            if not lost:
                return
            back = [{"key": st["held_by"], "order_id": oid, "partition": st.get("p", 0), "held_at": time.time(),
                     "channel": st["order"]["channel"]} for oid, st in lost if st.get("held_by") in holding]
            await store.hold(back)
            go = [(st.get("p", 0), {"outcome": "release", "order_id": oid, "by": "breaker_closed",
                                          "breaker": st.get("held_by")})
                  for oid, st in lost if st.get("held_by") not in holding]
            for partition, batch in by_partition(go).items():
                await replies.send(key=None, value=dumps({"replies": batch}), partition=partition)
            if back or go:
                log.warning("repaired held orders: %d put back under their breaker, %d released", len(back), len(go))
        except Exception as exc:  # noqa: BLE001
            log.warning("held-order repair skipped: %r", exc)

