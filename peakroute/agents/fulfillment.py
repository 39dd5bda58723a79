"""Fulfillment stage (order side): canonical orders → reservation requests → routed shipments.

Inputs, co-partitioned by order: ``peakroute.orders`` (key order_id) and
``peakroute.internal.stock-replies`` (sent to the order's partition).  State: table
``order-state`` (order_id → the order's routing state).  The decisions are the pure
:class:`~peakroute.domain.fulfillment.OrderRouter`; this module only reads, writes and sends.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any

import faust
import orjson

from ..domain.catalog import Catalog
from ..domain.fulfillment import RESERVING, ROUTED, Effects, OrderRouter, StockView
from ..domain.network import Network
from ..metrics import registry as m
from ..streams.codecs import dumps
from ..streams.topics import ORDERS, fulfillment_topic
from ..tables.redis_views import UNKNOWN_AVAILABLE, RedisViews
from .common import by_partition, dead_letter_exception, sku_partition

log = logging.getLogger("peakroute.fulfillment")
NO_VIEW = StockView(available=lambda s, w: 0, capacity_left=lambda w: 0)


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def register(app: faust.App, *, orders_and_replies: faust.TopicT, stock_ops: faust.TopicT,
             replies: faust.TopicT, order_events: faust.TopicT, dlq: faust.TopicT, state_table: Any,
             network: Network, catalog: Catalog, views: RedisViews, partitions: int) -> Any:
    router = OrderRouter(network, catalog)
    codes = [w.code for w in network.warehouses]
    capacity = {w.code: w.daily_capacity for w in network.warehouses}
    wh_topics = {code: app.topic(fulfillment_topic(code), key_type=bytes, value_type=bytes, partitions=partitions)
                 for code in codes}

    async def view_for(skus: list[str]) -> StockView:
        try:
            avail = await views.available(skus)
            used = await views.capacity_used(codes)
        except Exception as exc:  # noqa: BLE001 - degrade: plan blind, the SKU owners still decide
            log.warning("stock view unavailable (redis): %s; planning without it", exc)
            return StockView(available=lambda s, w: UNKNOWN_AVAILABLE, capacity_left=lambda w: 1)
        return StockView(available=lambda s, w: avail.get((s, w), 0),
                         capacity_left=lambda w: capacity[w] - used.get(w, 0))

    async def carry_out(fx: Effects, reply_to: int) -> None:
        ops = by_partition((sku_partition(op["sku"], partitions), {**op, "reply_to": reply_to}) for op in fx.stock_ops)
        for partition, batch in ops.items():
            await stock_ops.send(key=None, value=dumps({"ops": batch}), partition=partition)
        for wh, request in fx.requests:
            await wh_topics[wh].send(key=request["order_id"].encode(), value=dumps(request))
            m.FULFILLMENT_REQUESTS.labels(wh, request["type"]).inc()
        for ev in fx.events:
            await order_events.send(key=ev["order_id"].encode(), value=dumps(ev))
            m.ORDER_EVENTS.labels(ev["event"]).inc()
            if ev["event"] in ("routed", "split"):
                for wh in ev["warehouses"]:
                    try:
                        await views.claim_capacity(wh, ev["order_id"])
                    except Exception as exc:  # noqa: BLE001 - capacity is a soft limit
                        log.warning("capacity not counted (redis): %s", exc)

    def skus_of(state: dict | None, order: dict | None = None) -> list[str]:
        o = order or (state or {}).get("order") or {"lines": []}
        return [line["sku"] for line in o["lines"]]

    @app.agent(orders_and_replies, name="fulfillment")
    async def fulfillment_agent(stream: faust.StreamT) -> None:
        async for event in stream.events():
            msg = event.message
            started = time.perf_counter()
            try:
                if msg.topic == ORDERS:
                    order = orjson.loads(msg.value)
                    oid = order["order_id"]
                    state = state_table.get(oid)
                    new, fx = router.on_order(state, order, await view_for(skus_of(state, order)), now_iso())
                    new["p"] = msg.partition
                    state_table[oid] = new
                    await carry_out(fx, msg.partition)
                else:
                    for reply in orjson.loads(msg.value)["replies"]:
                        oid = reply["order_id"]
                        state = state_table.get(oid)
                        if reply["outcome"] == "expire":
                            if state is None:
                                continue
                            new, fx = router.on_expiry(state, now_iso())
                        else:
                            # A re-plan can follow any reply that completes a refused attempt.
                            needs_view = state is not None and (state["status"] == RESERVING
                                                                or reply["outcome"] == "evicted")
                            view = await view_for(skus_of(state)) if needs_view else NO_VIEW
                            new, fx = router.on_reply(state, reply, view, now_iso())
                        if new is not None and new is not state:
                            state_table[oid] = new
                        await carry_out(fx, msg.partition)
            except Exception as exc:  # noqa: BLE001 - nothing may escape a faust agent
                await dead_letter_exception(dlq, event, exc, channel=None, stage="fulfillment")
            finally:
                m.STAGE_SECONDS.labels("route").observe(time.perf_counter() - started)

    @app.timer(interval=5.0, on_leader=False)
    async def expire_unpaid() -> None:
        """Unpaid orders that took stock at order time release it when their expiry passes."""
        now = now_iso()
        due: dict[int, list[dict]] = {}
        for oid, state in list(state_table.items()):
            order = state.get("order") or {}
            exp = order.get("expires_at")
            if exp and exp < now and order.get("status") == "pending_payment" and state["status"] in (RESERVING, ROUTED):
                due.setdefault(state.get("p", 0), []).append({"outcome": "expire", "order_id": oid})
        for partition, batch in due.items():
            await replies.send(key=None, value=dumps({"replies": batch}), partition=partition)

    return fulfillment_agent
