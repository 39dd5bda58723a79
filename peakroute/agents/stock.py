"""Stock stage: the owner of each SKU's stock applies reservations, releases, shipments and
inventory changes — the only place a unit can be promised.

Input ``peakroute.internal.stock-ops``: batches ``{"ops": [...]}`` sent to the partition that owns
the SKUs (crc32(sku) mod N), so one SKU's state is touched by one worker, in order.  Replies go back
in batches, one message per order-owner partition, on ``peakroute.internal.stock-replies``.  A batch
of many orders' operations on one hot SKU is applied in one pass (Alibaba's trick for hot rows).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from typing import Any

import faust
import orjson

from ..domain.ledger import Ledger, apply_ops, hold_key, is_shipped, reserved_drift
from ..metrics import registry as m
from ..streams.batching import BatchMetrics, batches
from ..streams.codecs import dumps
from ..streams.outbox import Outbox
from ..streams.topics import STOCK_REPLIES
from ..tables.redis_views import RedisViews
from ..tables.stale import LateRecords, fresh_ops
from .common import (
    BATCH_MAX,
    BatchWrites,
    by_partition,
    dead_letter_exception,
    die,
    owned_events,
    prior_writes_durable,
    sku_partition,
)

log = logging.getLogger("peakroute.stock")

#: Replies a batch read again after a crash cannot give again, so they must be acknowledged before
#: the batch's table writes leave: "shipped" (once its tombstone and level landed, the shipment is
#: not applied again) and "evicted" (once the holds' deletions landed, nothing is left to evict).
#: Every other reply ("confirmed", "refused", "stale") is given again by the re-read batch, so it
#: leaves together with the batch's table writes and the next batch's gate waits for both: one
#: acknowledgement wait per batch instead of two.  A crash can then land the writes without the
#: replies; the re-read answers on what landed, which may differ from the first answer (see
#: fulfillment.OrderRouter.on_reply: the SKU owner's latest word wins).  The reservation
#: protocol's crash model checks both orders (tests/unit/test_reservation_protocol.py).
ANSWERED_ONCE = frozenset({"shipped", "evicted"})

#: A shipped hold's tombstone is needed only while its batch could be read again (until the batch's
#: offsets are committed: seconds); it is deleted after this long, under its partition's next batch.
TOMBSTONE_TTL_S = 600.0


def register(app: faust.App, *, stock_ops: faust.TopicT, replies: faust.TopicT, dlq: faust.TopicT,
             levels: Any, holds: Any, views: RedisViews, outbox: Outbox,
             batch_wait_s: float, batching: str = "arrival") -> Any:
    levels_batch, holds_batch = BatchWrites(levels), BatchWrites(holds)
    ledger = Ledger(levels_batch, holds_batch)  # type: ignore[arg-type]
    #: sku -> [(level key, reserved as its holds add up)]: levels to correct before their SKU is next
    #: touched; None = re-check everything at the next batch (after a restart or a rebalance, once
    #: the tables are recovered).  See domain.ledger.reserved_drift.
    drift: dict[str, list[tuple[str, int]]] | None = None
    #: partition -> (when noted, hold key) of shipped-hold tombstones, oldest first (see TOMBSTONE_TTL_S)
    tombstones: dict[int, deque[tuple[float, str]]] = defaultdict(deque)
    #: (stock-ops partition, order partition) -> the newest order owner seen (tables/stale.fresh_ops)
    senders = LateRecords()

    async def on_assigned(*_args: Any, **_kwargs: Any) -> None:
        nonlocal drift
        drift = None
        tombstones.clear()

    def purge_tombstones(partition: int, now: float) -> None:
        """Delete this partition's expired tombstones, under the current event (its partition)."""
        queue = tombstones.get(partition)
        while queue and now - queue[0][0] > TOMBSTONE_TTL_S:
            _, key = queue.popleft()
            hold = holds_batch.get(key)
            if hold is not None and is_shipped(hold):
                del holds_batch[key]

    app.on_partitions_assigned.connect(on_assigned, weak=False)

    def correct_drift(ops: list[dict]) -> None:
        """Re-derive ``reserved`` of the levels this event's SKUs own, under this event (whose
        partition owns them, so the correction lands in the right changelog partition)."""
        assert drift is not None
        for sku in {op.get("sku") for op in ops}:
            for key, reserved in drift.pop(sku, ()):  # type: ignore[arg-type]
                old = ledger.set_reserved(key, reserved)
                m.RESERVED_REDERIVED.inc()
                log.warning("stock level %s: reserved %d re-derived from its holds as %d", key, old, reserved)

    batch_metrics = BatchMetrics("stock")

    @app.agent(stock_ops, name="stock")
    async def stock_agent(stream: faust.StreamT) -> None:
        nonlocal drift
        async for batch in batches(stream, BATCH_MAX, batch_wait_s, batching, batch_metrics):
            started = time.perf_counter()
            events = owned_events(app, batch, "stock")
            if not events:
                continue
            now = time.time()
            if drift is None:  # owned_events: a batch is acted on only with the tables settled
                drift = {}
                for key, reserved in reserved_drift(levels, holds).items():
                    drift.setdefault(key.rsplit("|", 1)[0], []).append((key, reserved))
                for key, hold in holds.items():
                    if is_shipped(hold):
                        tombstones[sku_partition(hold["s"], app.conf.topic_partitions)].append((now, key))
            out: list[dict] = []
            touched: set[tuple[str, str]] = set()
            for event in events:
                levels_batch.event = holds_batch.event = event
                try:
                    doc = orjson.loads(event.message.value)
                    ops, late = fresh_ops(senders, event.message.partition, doc["ops"], doc.get("gen"),
                                          event.message.timestamp)
                    if late:
                        m.STOCK_OPS_LATE.inc(len(late))
                        log.warning("stock-ops[%s]@%s: %d operation(s) of a replaced order owner (generation %s) "
                                    "left out, e.g. %s %s line %s plan %s", event.message.partition,
                                    event.message.offset, len(late), doc.get("gen"), late[0].get("op"),
                                    late[0].get("order_id"), late[0].get("line_id"), late[0].get("plan"))
                    if drift:
                        correct_drift(ops)
                    for op in ops:
                        if op.get("short_pick"):
                            m.SHORT_PICKS.inc(-int(op.get("delta", 0)))
                    purge_tombstones(event.message.partition, now)
                    replies_, touched_ = apply_ops(ledger, ops, event.message.offset)
                    for op in ops:
                        # A confirmation's hold is looked up with the SKU it names (that SKU's owner
                        # holds it): one naming another SKU, or a line already released, ships nothing.
                        if op.get("op") == "ship" and holds_batch.get(hold_key(op["order_id"], op["line_id"])) is None:
                            m.SHIPMENTS_UNMATCHED.inc()
                            log.warning("shipment_confirmed for order %s line %s matches no reservation of %s at %s; "
                                        "nothing shipped", op["order_id"], op["line_id"], op.get("sku"),
                                        op.get("warehouse"))
                    tombstones[event.message.partition].extend(
                        (now, hold_key(r["order_id"], r["line_id"])) for r in replies_ if r["outcome"] == "shipped")
                    out += replies_
                    touched |= touched_
                except Exception as exc:  # noqa: BLE001 - nothing may escape a faust agent
                    await dead_letter_exception(dlq, event, exc, channel=None, stage="stock")
            if touched:
                # The view first, then the replies: an order re-planned on this batch's answers (an
                # evicted hold, a refusal) must plan on stock that includes this batch's changes —
                # a stock correction that moved units to another warehouse, say.  Published after
                # the replies, a fast re-plan could read the old view and backorder an order that
                # the new stock could ship (seen as a flaky test).  A projection: if the worker dies
                # before the replies are durable, the batch is re-applied and publishes the same.
                try:
                    await views.publish_stock((sku, wh, ledger.level(sku, wh)) for sku, wh in touched)
                except Exception as exc:  # noqa: BLE001 - the view is a projection; next batch refreshes it
                    log.warning("stock view not updated (redis): %s", exc)
            try:
                # The holds this batch read are in Kafka before its answers leave; and a worker woken
                # from a freeze longer than the session may no longer own these SKUs: it must exit
                # before it answers for them.
                await prior_writes_durable(outbox, "stock replies")
                for partition, batch in by_partition((r["reply_to"], r) for r in out).items():
                    outbox.send(STOCK_REPLIES, None, dumps({"replies": batch}), partition=partition)
                if any(r["outcome"] in ANSWERED_ONCE for r in out):
                    await outbox.flushed()  # these replies durable before the tables remember them
            except Exception as exc:  # noqa: BLE001
                die("stock", exc)
            levels_batch.flush()
            holds_batch.flush()
            for r in out:
                m.RESERVATIONS.labels(r["outcome"]).inc()
                if r["outcome"] == "evicted":
                    m.OVERSOLD_UNITS.inc(r["qty"])
                    m.OVERSOLD_ORDERS.inc()
            m.STAGE_SECONDS.labels("reserve").observe((time.perf_counter() - started) / max(1, len(events)))

    return stock_agent
