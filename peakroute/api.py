"""``peakroute api``: the stateless HTTP service — channel webhooks, order status, stock.

- ``POST /channels/{channel}/orders`` — signed webhooks (see connectors/webhook.py)
- ``GET /orders/{order_id}`` — "where is my order?": status, warehouse(s), timeline
- ``GET /stock/{sku}`` — on hand, reserved, safety stock, available per warehouse
- ``GET /breakers``, ``POST /breakers/{key}/trip|close|drain``, ``GET /review``,
  ``POST /review/{order_id}/approve|reject`` — surge breaker operations (connectors/ops.py)
- ``GET /healthz``

Status and stock come from Redis projections kept fresh by the workers (within about a second).
"""

from __future__ import annotations

import re

from aiohttp import web

from .config import CHANNELS, Settings
from .connectors import ops, webhook
from .connectors.sink import KafkaSink
from .tables.redis_views import RedisViews

# Matched with fullmatch: a trailing newline ("%0A" in the path) must not pass as "$" would let it.
ORDER_ID = re.compile("(" + "|".join(CHANNELS) + r"):[0-9A-Za-z_\-]{1,64}")
SKU = re.compile(r"[0-9A-Za-z_\-.]{1,64}")


def build_api(settings: Settings, *, use_redis: bool = True) -> web.Application:
    """The aiohttp application; Kafka and Redis clients live and die with it."""
    # Leave headroom over the webhook limit so an oversized body is answered 413 by us, with JSON.
    app = web.Application(client_max_size=settings.max_body_bytes + 1024)
    sink = KafkaSink(settings)
    guard: webhook.ReplayGuard = (webhook.RedisReplayGuard(settings.redis_url) if use_redis
                                  else webhook.MemoryReplayGuard())
    webhook.add_routes(app, settings, sink, guard)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/healthz", health)

    views = RedisViews(settings.redis_url)
    from .domain.catalog import load_catalog
    from .tables.breaker_store import BreakerStore

    breakers = BreakerStore(settings.redis_url, settings.partitions)
    ops.add_routes(app, settings, sink, breakers, load_catalog(settings.catalog_file or None))

    async def order_status(request: web.Request) -> web.Response:
        order_id = request.match_info["order_id"]
        if not ORDER_ID.fullmatch(order_id):
            return web.json_response({"error": "order id must look like '<channel>:<channel order id>', "
                                               f"channel one of {', '.join(CHANNELS)}"}, status=400)
        try:
            doc = await views.order_status(order_id)
        except Exception:  # noqa: BLE001
            return web.json_response({"error": "status store unavailable, retry later"}, status=503)
        if doc is None:
            return web.json_response({"error": f"unknown order {order_id}"}, status=404)
        return web.json_response(doc, dumps=_dumps)

    async def stock(request: web.Request) -> web.Response:
        sku = request.match_info["sku"]
        if not SKU.fullmatch(sku):
            return web.json_response({"error": "bad SKU code"}, status=400)
        try:
            per_wh = await views.stock_of(sku)
        except Exception:  # noqa: BLE001
            return web.json_response({"error": "stock store unavailable, retry later"}, status=503)
        if not per_wh:
            return web.json_response({"error": f"no stock known for {sku}"}, status=404)
        total = {k: sum(v[k] for v in per_wh.values()) for k in ("on_hand", "reserved", "safety_stock", "available")}
        return web.json_response({"sku": sku, "warehouses": per_wh, "total": total}, dumps=_dumps)

    app.router.add_get("/orders/{order_id}", order_status)
    app.router.add_get("/stock/{sku}", stock)

    async def close(_: web.Application) -> None:
        sink.close()
        if isinstance(guard, webhook.RedisReplayGuard):
            await guard.close()
        await views.close()
        await breakers.close()

    app.on_cleanup.append(close)
    return app


def _dumps(obj: object) -> str:
    import orjson

    return orjson.dumps(obj).decode()


#: Shorter secrets are accepted (they work) but flagged at start: a webhook secret or operator token
#: should be random, e.g. ``python -c 'import secrets; print(secrets.token_hex(32))'``.
MIN_SECRET_CHARS = 16


def weak_secrets(settings: Settings) -> list[str]:
    """Names (never values) of configured secrets shorter than :data:`MIN_SECRET_CHARS`."""
    weak = [f"PEAKROUTE_WEBHOOK_SECRET_{ch.upper()}" for ch, secret in sorted(settings.webhook_secrets.items())
            if len(secret) < MIN_SECRET_CHARS]
    if settings.operator_token and len(settings.operator_token) < MIN_SECRET_CHARS:
        weak.append("PEAKROUTE_OPERATOR_TOKEN")
    return weak


def run_api(settings: Settings, port: int | None = None) -> None:
    import logging

    for name in weak_secrets(settings):
        logging.getLogger("peakroute.api").warning(
            "%s is shorter than %d characters: use a long random secret", name, MIN_SECRET_CHARS)
    web.run_app(build_api(settings), host="0.0.0.0", port=port or settings.http_port,
                print=lambda *_: None)
