"""Order-status projection: ``peakroute.order-events`` → Redis, for ``GET /orders/{order_id}``.

Writes are idempotent (one timeline field per distinct event), so re-delivered events change nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
import orjson

from ..tables.redis_views import RedisViews

log = logging.getLogger("peakroute.projection")


def register(app: faust.App, *, order_events: faust.TopicT, views: RedisViews) -> Any:
    @app.agent(order_events, name="order-status")
    async def projection_agent(stream: faust.StreamT) -> None:
        async for batch in stream.take(500, within=0.05):
            events = []
            for value in batch:
                try:
                    events.append(orjson.loads(value))
                except orjson.JSONDecodeError:
                    log.error("unreadable order event skipped: %r", value[:200])
            while True:
                try:
                    await views.project_events(events)
                    break
                except Exception as exc:  # noqa: BLE001 - Redis away: wait, never skip a status
                    log.warning("order status projection waiting for redis: %s", exc)
                    await asyncio.sleep(1.0)

    return projection_agent
