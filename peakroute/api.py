"""``peakroute api``: the stateless HTTP service (webhooks now; status and ops endpoints later)."""

from __future__ import annotations

from aiohttp import web

from .config import Settings
from .connectors import webhook
from .connectors.sink import KafkaSink


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

    async def close(_: web.Application) -> None:
        sink.close()
        if isinstance(guard, webhook.RedisReplayGuard):
            await guard.close()

    app.on_cleanup.append(close)
    return app


def run_api(settings: Settings, port: int | None = None) -> None:
    web.run_app(build_api(settings), host="0.0.0.0", port=port or settings.http_port,
                print=lambda *_: None)
