"""Webhook receiver: ``POST /channels/{channel}/orders`` — how channels push orders to us.

Only authentic requests are written (per-channel HMAC secret, timestamp window, one use per
signature); bodies are written unchanged to the channel's raw topic keyed by channel order id, and
the channel gets 202 only after Kafka acknowledged the write.  Validation of the order itself happens
in the normalize stage, which dead-letters what it cannot use, so nothing signed is ever dropped at
the edge.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Protocol

from aiohttp import web

from ..config import CHANNELS, Settings
from ..domain.channels import channel_order_id
from ..metrics import registry as m
from ..streams.topics import raw_topic
from .signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureError, replay_token, verify
from .sink import KafkaSink, SinkError

log = logging.getLogger("peakroute.webhook")


class ReplayGuard(Protocol):
    async def first_use(self, token: str, ttl_s: int) -> bool:
        """True the first time ``token`` is seen within ``ttl_s``; False for a replay."""


class MemoryReplayGuard:
    """Per-process replay guard (single api process, or tests)."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._max = max_entries

    async def first_use(self, token: str, ttl_s: int) -> bool:
        now = time.monotonic()
        while self._seen and (len(self._seen) > self._max or next(iter(self._seen.values())) < now):
            self._seen.popitem(last=False)
        if token in self._seen and self._seen[token] >= now:
            return False
        self._seen[token] = now + ttl_s
        return True


class RedisReplayGuard:
    """Replay guard shared by every api process (SET NX with a TTL)."""

    def __init__(self, redis_url: str) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(redis_url)

    async def first_use(self, token: str, ttl_s: int) -> bool:
        return bool(await self._redis.set(f"peakroute:webhook-sig:{token}", b"1", nx=True, ex=ttl_s))

    async def close(self) -> None:
        await self._redis.aclose()


def _error(status: int, message: str, channel: str) -> web.Response:
    m.WEBHOOK_REQUESTS.labels(channel, str(status)).inc()
    return web.json_response({"error": message}, status=status)


def add_routes(app: web.Application, settings: Settings, sink: KafkaSink, guard: ReplayGuard) -> None:
    """Mount the webhook route on an aiohttp application."""

    async def receive_order(request: web.Request) -> web.Response:
        channel = request.match_info["channel"]
        if channel not in CHANNELS:
            return _error(404, f"unknown channel {channel!r}; known: {', '.join(CHANNELS)}", "unknown")
        if request.content_length is not None and request.content_length > settings.max_body_bytes:
            return _error(413, f"body larger than {settings.max_body_bytes} bytes", channel)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"body larger than {settings.max_body_bytes} bytes", channel)
        if len(body) > settings.max_body_bytes:
            return _error(413, f"body larger than {settings.max_body_bytes} bytes", channel)
        signature = request.headers.get(SIGNATURE_HEADER)
        try:
            verify(settings.webhook_secrets.get(channel), request.headers.get(TIMESTAMP_HEADER),
                   signature, body, now=time.time(), tolerance_s=settings.webhook_tolerance_s)
        except SignatureError as exc:
            # Only the reason: never the headers (a signature), the body (personal data) or a secret.
            log.warning("webhook refused: channel=%s reason=%s remote=%s", channel, exc, request.remote)
            return _error(401, str(exc), channel)
        # A signature is usable for 2 x tolerance (timestamps within +-tolerance): remember it that long.
        try:
            first = await guard.first_use(replay_token(channel, signature or ""), 2 * settings.webhook_tolerance_s)
        except Exception as exc:  # noqa: BLE001  (Redis down: we cannot tell a replay, so store nothing)
            log.error("webhook replay guard unavailable: channel=%s error=%s", channel, type(exc).__name__)
            return _error(503, "replay guard unavailable, retry later", channel)
        if not first:
            log.warning("webhook refused: channel=%s reason=replayed signature", channel)
            return _error(401, "request already received (replayed signature)", channel)
        key = channel_order_id(channel, body)
        try:
            partition, offset = await sink.write(raw_topic(channel), key.encode() if key else None, body)
        except SinkError as exc:
            log.error("webhook could not write to Kafka: channel=%s error=%s", channel, exc)
            return _error(503, "order not stored, retry later", channel)
        m.WEBHOOK_REQUESTS.labels(channel, "202").inc()
        return web.json_response({"accepted": True, "channel_order_id": key, "topic": raw_topic(channel),
                                  "partition": partition, "offset": offset}, status=202)

    app.router.add_post("/channels/{channel}/orders", receive_order)
