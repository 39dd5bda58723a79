"""Stock stage: the owner of each SKU's stock applies reservations, releases, shipments and
inventory changes — the only place a unit can be promised.

Input ``peakroute.internal.stock-ops``: batches ``{"ops": [...]}`` sent to the partition that owns
the SKUs (crc32(sku) mod N), so one SKU's state is touched by one worker, in order.  Replies go back
in batches to the order owner's partition on ``peakroute.internal.stock-replies``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
import orjson

from ..domain.ledger import Ledger, apply_ops
from ..metrics import registry as m
from ..streams.codecs import dumps
from ..tables.redis_views import RedisViews
from .common import by_partition, dead_letter_exception

log = logging.getLogger("peakroute.stock")


def register(app: faust.App, *, stock_ops: faust.TopicT, replies: faust.TopicT, dlq: faust.TopicT,
             levels: Any, holds: Any, views: RedisViews) -> Any:
    ledger = Ledger(levels, holds)

    @app.agent(stock_ops, name="stock")
    async def stock_agent(stream: faust.StreamT) -> None:
        async for event in stream.events():
            started = time.perf_counter()
            try:
                ops = orjson.loads(event.message.value)["ops"]
                out, touched = apply_ops(ledger, ops)
                for partition, batch in by_partition((r["reply_to"], r) for r in out).items():
                    await replies.send(key=None, value=dumps({"replies": batch}), partition=partition)
                for r in out:
                    m.RESERVATIONS.labels(r["outcome"]).inc()
                    if r["outcome"] == "evicted":
                        m.OVERSOLD_UNITS.inc(r["qty"])
                if touched:
                    try:
                        await views.publish_stock((sku, wh, ledger.level(sku, wh)) for sku, wh in touched)
                    except Exception as exc:  # noqa: BLE001 - the view is a projection; refresh later
                        log.warning("stock view not updated (redis): %s", exc)
            except Exception as exc:  # noqa: BLE001 - nothing may escape a faust agent
                await dead_letter_exception(dlq, event, exc, channel=None, stage="stock")
            finally:
                m.STAGE_SECONDS.labels("reserve").observe(time.perf_counter() - started)

    return stock_agent
