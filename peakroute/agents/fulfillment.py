"""Fulfillment stage (order side): raw payloads → canonical orders → reservation requests → routed shipments.

Inputs, co-partitioned: the raw channel topics ``peakroute.raw.<channel>`` (key: channel order id)
and ``peakroute.internal.stock-replies`` (sent to the order's partition, ``state["p"]``).  State:
table ``order-routing`` (order_id → the order's routing state and the last canonical version
emitted for it, on the raw partition its payloads land on).

One agent does what two stages did before: it normalizes each raw payload (the pure
:func:`~peakroute.agents.normalize.process_raw`: dead letter, duplicate, or a new canonical state),
publishes the canonical order on ``peakroute.orders`` (public contract, an output only), and feeds
it straight to the pure :class:`~peakroute.domain.fulfillment.OrderRouter`.  Why: faust's cost is
per Kafka message, and the canonical order's round trip through ``peakroute.orders`` cost a consume,
a second table (the dedup versions) and a batching wait per order.  The version lives in the same
record as the routing state, so a crash can never persist one without the other (a remembered
version without its state would drop the order's re-read as a duplicate).

Work is done in batches: one Redis read of the stock view per batch (decremented locally as the
batch plans, so a hot SKU is not promised twice within a batch), one stock-ops message per SKU-owner
partition per batch, one Redis write of capacity claims per batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import faust
import orjson

from ..domain.breaker import BreakerConfig, keys_for, must_hold
from ..domain.catalog import Catalog
from ..domain.dedup import OrderVersion
from ..domain.fulfillment import DECIDED_EARLY, Effects, OrderRouter, StockView, Watchlist
from ..domain.network import Network
from ..metrics import registry as m
from ..streams.batching import BatchMetrics, batches
from ..streams.codecs import dumps
from ..streams.outbox import Outbox
from ..streams.topics import ORDER_EVENTS, ORDERS, REVIEW, STOCK_OPS, fulfillment_topic
from ..tables.breaker_store import BreakerStore
from ..tables.redis_views import UNKNOWN_AVAILABLE, RedisViews
from .common import (
    BATCH_MAX,
    BatchWrites,
    by_partition,
    dead_letter_exception,
    die,
    order_partition,
    owned_events,
    prior_writes_durable,
    send_dead_letter,
    sku_partition,
)
from .normalize import channel_of, is_raw, process_raw

log = logging.getLogger("peakroute.fulfillment")
#: A reservation with unanswered lines for this long is asked again (heals a lost message).
RETRY_AFTER_S = 20.0


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class BatchView:
    """The stock view for one batch: read once from Redis, then kept up to date locally with what
    this batch itself plans, so consecutive orders in the batch do not plan on the same units."""

    def __init__(self, available: dict[tuple[str, str], int], capacity_left: dict[str, int], blind: bool) -> None:
        self._available = available
        self._known = {sku for sku, _ in available}
        self._capacity = capacity_left
        self.blind = blind
        self.view = StockView(available=self.available, capacity_left=lambda w: self._capacity.get(w, 0))

    def available(self, sku: str, wh: str) -> int:
        # A SKU the view has never heard of (its owner has not published yet) is unknown, not
        # out of stock: plan optimistically and let the owner decide.
        if self.blind or sku not in self._known:
            return UNKNOWN_AVAILABLE
        return self._available.get((sku, wh), 0)

    def planned(self, ops: list[dict]) -> None:
        for op in ops:
            if op["op"] == "reserve":
                key = (op["sku"], op["warehouse"])
                self._available[key] = self._available.get(key, 0) - int(op["qty"])


def register(app: faust.App, *, raws_and_replies: faust.TopicT, replies: faust.TopicT, dlq: faust.TopicT,
             state_table: Any, network: Network, catalog: Catalog, views: RedisViews, breakers: BreakerStore,
             breaker_cfg: BreakerConfig, partitions: int, outbox: Outbox, watch: Watchlist,
             batch_wait_s: float, batching: str = "arrival", internal_waits: dict[str, float] | None = None) -> Any:
    router = OrderRouter(network, catalog)
    states = BatchWrites(state_table)
    codes = [w.code for w in network.warehouses]
    capacity = {w.code: w.daily_capacity for w in network.warehouses}
    wh_topics = {code: fulfillment_topic(code) for code in codes}

    async def batch_view(skus: set[str]) -> BatchView:
        try:
            avail = await views.available(skus) if skus else {}
            used = await views.capacity_used(codes)
        except Exception as exc:  # noqa: BLE001 - degrade: plan blind, the SKU owners still decide
            log.warning("stock view unavailable (redis): %s; planning without it", exc)
            return BatchView({}, {w: 1 for w in codes}, blind=True)
        return BatchView(avail, {w: capacity[w] - used.get(w, 0) for w in codes}, blind=False)

    backorders: Counter[str] = Counter()

    def observe_outcomes(state: dict, fx: Effects) -> None:
        """Outcome counters and end-to-end latencies, from the events a transition produced."""
        order = state.get("order") or {}
        channel = order.get("channel", "-")
        now = time.time()
        for ev in fx.events:
            kind = ev["event"]
            if kind in ("routed", "split"):
                m.ORDER_OUTCOMES.labels(channel, kind).inc()
                for wh in ev["warehouses"]:
                    m.ROUTED_BY_WAREHOUSE.labels(wh, channel).inc()
                if state.get("ingest"):
                    m.INGEST_TO_ROUTED.labels(channel).observe(max(0.0, now - state["ingest"]))
                origin = order.get("paid_at") or order.get("created_at")
                if origin:
                    m.ORDER_TO_ROUTED.labels(channel).observe(max(0.0, now - _epoch(origin)))
                if kind == "split":
                    m.RESOLUTIONS.labels("split").inc()
                if state.get("attempt", 1) > 1:
                    m.RESOLUTIONS.labels("rerouted").inc()
            elif kind == "backordered":
                m.ORDER_OUTCOMES.labels(channel, kind).inc()
                backorders.update(line["sku"] for line in order.get("lines", []) if not line["gift"])
            elif kind == "held":
                m.ORDER_OUTCOMES.labels(channel, kind).inc()
                m.RESOLUTIONS.labels("manual_review").inc()
            elif kind == "cancelled":
                m.ORDER_OUTCOMES.labels(channel, "rejected" if ev.get("reason") == "rejected_in_review"
                                        else "cancelled").inc()
                if ev.get("reason") == "channel_cancelled" and order.get("updated_at"):
                    m.CANCEL_PROPAGATION.observe(max(0.0, now - _epoch(order["updated_at"])))

    @app.timer(interval=5.0, on_leader=False)
    async def export_gauges() -> None:
        """Top stock-outs, consumer lag and table sizes for the dashboards."""
        for sku, n in backorders.most_common(20):
            m.STOCKOUTS.labels(sku).set(n)
        try:
            monitor = app.monitor
            for tp, end in dict(monitor.tp_end_offsets).items():
                read = monitor.tp_read_offsets.get(tp)
                if read is not None:
                    m.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, end - read - 1))
        except Exception as exc:  # noqa: BLE001 - a metric must never stop the worker
            log.debug("lag not exported: %r", exc)
        for name, table in app.tables.items():
            m.TABLE_KEYS.labels(name).set(len(table))

    async def holding_keys() -> set[str]:
        try:
            return await breakers.holding_keys()
        except Exception as exc:  # noqa: BLE001 - Redis away: the breaker cannot see; orders flow
            log.warning("breaker state unavailable (redis): %s; not holding", exc)
            return set()

    async def flush(early: list[tuple[str, bytes, bytes, int | None, float | None]], pending_ops: list[tuple[int, dict]],
                    fx: Effects, counted: list[tuple[str, int]], held: list[dict]) -> None:
        # The state this batch read is in Kafka before anything it decided leaves; and a worker
        # frozen while it planned this batch may have lost these orders to another worker
        # meanwhile: its shipment requests would now be a zombie's (see FreezeWatch).
        await prior_writes_durable(outbox, "fulfillment effects")
        for topic, key, value, partition, timestamp in early:  # forwarded payloads, canonical orders
            outbox.send(topic, key, value, partition=partition, timestamp=timestamp)
        for partition, batch in by_partition(pending_ops).items():
            # "gen": the generation of this worker's assignment, so that the SKU owner can tell a
            # replaced owner's late requests (tables/stale.fresh_ops).
            outbox.send(STOCK_OPS, None, dumps({"ops": batch, "gen": app.consumer_generation_id}), partition=partition)
        for wh, request in fx.requests:
            outbox.send(wh_topics[wh], request["order_id"].encode(), dumps(request))
            m.FULFILLMENT_REQUESTS.labels(wh, request["type"]).inc()
        claims = []
        for ev in fx.events:
            outbox.send(ORDER_EVENTS, ev["order_id"].encode(), dumps(ev))
            m.ORDER_EVENTS.labels(ev["event"]).inc()
            if ev["event"] in ("routed", "split"):
                claims += [(wh, ev["order_id"]) for wh in ev["warehouses"]]
        for record in fx.review:
            outbox.send(REVIEW, record["order_id"].encode(), dumps(record))
        # The Redis writes of a batch are independent of each other, so they overlap with Kafka's
        # acknowledgement and with each other instead of costing a round trip each in turn.
        # The effects are durable before the order-state table remembers them (flushed() raises).
        await asyncio.gather(project(fx.events), outbox.flushed())
        await asyncio.gather(count_capacity(claims), breaker_bookkeeping(counted, held, fx.unheld))

    async def project(events: list[dict]) -> None:
        """The "where is my order?" projection, written from the very events just sent (one Redis
        round trip per batch instead of a second consumer of peakroute.order-events)."""
        if not events:
            return
        try:
            await views.project_events(events)
        except Exception as exc:  # noqa: BLE001 - a projection; the events topic stays the record
            log.warning("order status projection not updated (redis): %s", exc)

    async def count_capacity(claims: list[tuple[str, str]]) -> None:
        if not claims:
            return
        try:
            await views.claim_capacity_many(claims)
        except Exception as exc:  # noqa: BLE001 - capacity is a soft limit
            log.warning("capacity not counted (redis): %s", exc)

    async def breaker_bookkeeping(counted: list[tuple[str, int]], held: list[dict], unheld: list[str]) -> None:
        try:
            await breakers.count(counted)
            await breakers.hold(held)
            for oid in unheld:
                await breakers.unhold(oid)
        except Exception as exc:  # noqa: BLE001 - held orders are also in the table: repaired later
            log.warning("breaker bookkeeping not written (redis): %s", exc)

    def last_version(order_id: str) -> OrderVersion | None:
        state = states.get(order_id)
        v = state.get("v") if state else None
        return OrderVersion.from_dict(v) if v else None

    async def normalized(event: faust.EventT, emitted: dict[str, OrderVersion],
                         early: list[tuple[str, bytes, bytes, int | None, float | None]]) -> tuple[dict, dict] | None:
        """A raw payload as a canonical order to route with its dedup version (to be stored in
        the order's routing state), or None (dead-lettered, forwarded or a duplicate).
        ``emitted``: versions emitted earlier in this batch (not yet in the table); ``early``: the
        records to send with the batch's effects (a forwarded copy, the canonical order)."""
        msg = event.message
        channel = channel_of(msg.topic)
        m.RAW_RECEIVED.labels(channel).inc()
        out = process_raw(channel, msg.value, catalog, lambda oid: emitted.get(oid) or last_version(oid))
        if out.order_id is not None:
            channel_order_id = out.order_id.split(":", 1)[1]
            home = order_partition(channel_order_id, partitions)
            if home != msg.partition:
                # Its routing state lives on its own partition: two owners of one order would
                # route it twice.  The copy is read there like any re-send (deduplicated).
                early.append((msg.topic, channel_order_id.encode(), msg.value, home, msg.timestamp))
                m.RAW_FORWARDED.labels(channel).inc()
                return None
        if out.rejection is not None:
            rej = out.rejection
            await send_dead_letter(dlq, event, channel=channel, stage="normalize", reason=rej.code,
                                   field=rej.field, detail=rej.detail)
            return None
        if out.value is None or out.version is None or out.order_id is None or out.order is None:
            m.DUPLICATES.labels(channel, out.verdict.value).inc()  # type: ignore[union-attr]
            return None
        # Keep the raw topic's timestamp (ingest time): end-to-end latency is measured from it.
        early.append((ORDERS, out.order_id.encode(), out.value, None, msg.timestamp))
        emitted[out.order_id] = out.version
        m.ORDERS_EMITTED.labels(channel, out.verdict.value, out.status).inc()  # type: ignore[union-attr]
        if msg.timestamp:
            m.INGEST_TO_CANONICAL.observe(max(0.0, time.time() - msg.timestamp))
        return out.order, out.version.to_dict()

    batch_metrics = BatchMetrics("fulfillment")

    @app.agent(raws_and_replies, name="fulfillment")
    async def fulfillment_agent(stream: faust.StreamT) -> None:
        async for batch in batches(stream, BATCH_MAX, batch_wait_s, batching, batch_metrics, internal_waits):
            started = time.perf_counter()
            events = owned_events(app, batch, "fulfillment")
            if not events:
                continue
            watch.ensure(state_table, recovered=True)
            # (event, canonical order or reply batch, the order's dedup version or None for replies)
            decoded: list[tuple[faust.EventT, Any, dict | None]] = []
            skus: set[str] = set()
            emitted: dict[str, OrderVersion] = {}
            early: list[tuple[str, bytes, bytes, int | None, float | None]] = []
            raw_count, raw_seconds = 0, 0.0
            for event in events:
                states.event = event
                if is_raw(event.message.topic):
                    raw_started = time.perf_counter()
                    raw_count += 1
                    try:
                        found = await normalized(event, emitted, early)
                    except Exception as exc:  # noqa: BLE001 - nothing may escape a faust agent
                        await dead_letter_exception(dlq, event, exc, channel=channel_of(event.message.topic),
                                                    stage="normalize")
                        found = None
                    raw_seconds += time.perf_counter() - raw_started
                    if found is not None:
                        order, order_version = found
                        decoded.append((event, order, order_version))
                        skus.update(line["sku"] for line in order["lines"])
                    continue
                try:
                    doc = orjson.loads(event.message.value)
                    if not isinstance(doc, dict):
                        raise TypeError(f"top level must be an object, got {type(doc).__name__}")
                except (orjson.JSONDecodeError, TypeError) as exc:  # null, empty, not UTF-8 or not JSON
                    await send_dead_letter(dlq, event, channel=None, stage="fulfillment", reason="malformed_json",
                                           field="$", detail=f"{type(exc).__name__}: {exc}"[:500])
                    continue
                try:
                    # A poison pill (wrong shapes) must fail here, inside the try, and become a
                    # dead letter — never escape the agent.
                    wanted: set[str] = set()
                    for reply in doc["replies"]:
                        if "sku" in reply:
                            wanted.add(str(reply["sku"]))
                        else:  # a control message (release, reject, expire): the order's own SKUs
                            state = states.get(reply.get("order_id"))
                            if state and state.get("order"):
                                wanted.update(line["sku"] for line in state["order"]["lines"])
                except Exception as exc:  # noqa: BLE001
                    await dead_letter_exception(dlq, event, exc, channel=None, stage="fulfillment")
                    continue
                decoded.append((event, doc, None))
                skus |= wanted
            if raw_count:
                m.STAGE_SECONDS.labels("normalize").observe(raw_seconds / raw_count)
            view = await batch_view(skus - {""})
            breaker_started = time.perf_counter()
            holding = await holding_keys()
            m.STAGE_SECONDS.labels("breaker").observe((time.perf_counter() - breaker_started) / max(1, len(events)))
            fx = Effects()
            now = now_iso()  # one decision time per batch (formatting it per order cost ~2% of the loop)
            pending_ops: list[tuple[int, dict]] = []
            counted: list[tuple[str, int]] = []
            held: list[dict] = []
            for event, doc, order_version in decoded:
                states.event = event
                partition = event.message.partition
                try:
                    if is_raw(event.message.topic):
                        items = [("order", doc)]
                    else:
                        items = [("reply", r) for r in doc["replies"]]
                    for kind, item in items:
                        oid = item["order_id"]
                        state = states.get(oid)
                        if kind == "order":
                            hold_keys: list[str] = []
                            if router.wants_stock(item) and (state is None or state["status"] == "waiting"):
                                skus_ = [ln["sku"] for ln in item["lines"] if not ln["gift"]]
                                second = int(event.message.timestamp or time.time())  # ingest time
                                counted += [(k, second) for k in keys_for(item["channel"], skus_)]
                                if holding:
                                    hold_keys = must_hold(holding, item["channel"], skus_, router.priority_of(item),
                                                          breaker_cfg)
                            new, one = router.on_order(state, item, view.view, now, hold_keys)
                            # Always a fresh dict: the version must be written even when the
                            # routing state did not change.
                            new = {**new, "p": partition, "v": order_version}
                            if event.message.timestamp:
                                new["ingest"] = event.message.timestamp
                            held += [{"key": key, "order_id": oid_, "partition": partition, "held_at": time.time(),
                                      "channel": item["channel"], "skus": [ln["sku"] for ln in item["lines"]]}
                                     for key, oid_ in one.held]
                        elif state is None or state["status"] == DECIDED_EARLY:
                            if item.get("outcome") not in ("release", "reject"):
                                continue  # a stock answer or a timer's nudge for an order not here: nothing to do
                            new = router.on_decision_before_order(
                                state, oid, item["outcome"], item.get("by", "breaker_drain"), now, item.get("breaker"))
                            if new is not state:
                                log.warning("order %s: %s (%s) arrived before the order; kept until it arrives",
                                            oid, item["outcome"], item.get("by"))
                                states[oid] = {**new, "p": partition}
                            continue
                        elif item["outcome"] == "expire":
                            new, one = router.on_expiry(state, now)
                        elif item["outcome"] == "retry":
                            new, one = router.on_retry(state, now)
                        elif item["outcome"] == "release":
                            new, one = router.on_release(state, view.view, now, item.get("by", "breaker_drain"))
                        elif item["outcome"] == "reject":
                            new, one = router.on_reject(state, now, item.get("by", "operator"))
                        else:
                            new, one = router.on_reply(state, item, view.view, now)
                        if new is not None and new is not state:
                            states[oid] = new
                            watch.update(oid, new)
                        if one.events and new is not None:
                            observe_outcomes(new, one)
                        view.planned(one.stock_ops)
                        pending_ops += [(sku_partition(op["sku"], partitions), {**op, "reply_to": partition})
                                        for op in one.stock_ops]
                        fx.requests += one.requests
                        fx.events += one.events
                        fx.review += one.review
                        fx.unheld += one.unheld
                except Exception as exc:  # noqa: BLE001 - nothing may escape a faust agent
                    await dead_letter_exception(dlq, event, exc, channel=None, stage="fulfillment")
            try:
                await flush(early, pending_ops, fx, counted, held)
            except Exception as exc:  # noqa: BLE001
                die("fulfillment", exc)
            states.flush()
            m.STAGE_SECONDS.labels("route").observe((time.perf_counter() - started) / max(1, len(events)))

    @app.timer(interval=5.0, on_leader=False)
    async def expire_unpaid() -> None:
        """Unpaid orders that took stock at order time release it when their expiry passes; and
        reservations waiting more than RETRY_AFTER_S for an answer ask again (heals a lost message)."""
        now = now_iso()
        stale_before = datetime.fromtimestamp(time.time() - RETRY_AFTER_S, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        if not watch.ensure(state_table, in_recovery=app.in_recovery, now=time.monotonic()):
            return
        due: dict[int, list[dict]] = {}
        for partition, message in watch.due(now, stale_before):
            due.setdefault(partition, []).append(message)
            if message["outcome"] == "retry":
                m.RESERVATION_RETRIES.inc()
        for partition, batch in due.items():
            await replies.send(key=None, value=dumps({"replies": batch}), partition=partition)

    return fulfillment_agent
