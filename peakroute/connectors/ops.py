"""Operations API for a peak: surge breakers and the review queue (mounted on ``peakroute api``).

- ``GET  /breakers``                          every breaker: state, rate, baseline, since, held
- ``POST /breakers/{key}/trip|close|drain``   (``drain?rate=N``) — operator token required
- ``GET  /review?offset=0&limit=50&key=K``    held orders, oldest first
- ``POST /review/{order_id}/approve|reject``  — operator token required

State-changing calls need ``Authorization: Bearer <PEAKROUTE_OPERATOR_TOKEN>`` (401 without it, and
always when no token is configured) and are written to ``peakroute.audit`` (who, what, when).
Who = the ``X-Operator`` header (a name, not a secret).  Releasing or rejecting an order sends a
control message to the order's own partition, where the worker acts on it exactly once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from typing import Any

import orjson
from aiohttp import web

from ..config import CHANNELS, Settings
from ..domain import breaker as bk
from ..domain.catalog import Catalog
from ..domain.deadletter import utc_now_iso
from ..streams.topics import AUDIT, STOCK_REPLIES
from ..tables.breaker_store import BreakerStore
from .sink import KafkaSink

log = logging.getLogger("peakroute.ops")
OPERATOR = re.compile(r"^[\w.@\-]{1,64}$")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def token_matches(given: str, token: str) -> bool:
    """Constant-time token check.  Both sides are hashed first, so neither the time taken nor an
    error depends on the given token's length or bytes (headers may carry any bytes)."""
    def digest(s: str) -> bytes:
        return hashlib.sha256(s.encode("utf-8", "surrogateescape")).digest()

    return bool(token) and hmac.compare_digest(digest(given), digest(token))


def add_routes(app: web.Application, settings: Settings, sink: KafkaSink, store: BreakerStore,
               catalog: Catalog) -> None:
    cfg = settings.breaker_config()

    def known_key(key: str) -> bool:
        kind, _, name = key.partition(":")
        return (kind == "channel" and name in CHANNELS) or (kind == "sku" and name in catalog)

    def operator(request: web.Request) -> str | None:
        """The caller's name if the bearer token is right, else None (constant-time compare)."""
        token = settings.operator_token
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if not token or scheme.lower() != "bearer":
            return None
        if not token_matches(given.strip(" \t"), token):
            return None
        who = request.headers.get("X-Operator", "operator")
        return who if OPERATOR.match(who) else "operator"

    async def audit(who: str, action: str, target: str, **params: Any) -> None:
        record = {"who": who, "action": action, "target": target, "params": params, "at": utc_now_iso()}
        await sink.write(AUDIT, target.encode(), orjson.dumps(record))
        log.info("ops: %s %s %s %s", who, action, target, params or "")

    def unauthorized() -> web.Response:
        why = "operator token required" if settings.operator_token else \
            "ops calls are disabled: PEAKROUTE_OPERATOR_TOKEN is not set"
        return _error(401, why)

    async def list_breakers(_: web.Request) -> web.Response:
        breakers = await store.all()
        held = await store.held_count(breakers)
        out = []
        for key, b in sorted(breakers.items()):
            if b.state == bk.CLOSED and not b.trips and not key.startswith("channel:"):
                continue  # quiet SKUs: not interesting, keeps the answer small
            out.append({"key": key, "state": b.state, "rate": round(b.rate, 2), "baseline": round(b.baseline, 2),
                        "since": b.since, "trips": b.trips, "held": held.get(key, 0), "reason": b.reason,
                        "manual": b.manual, "drain_rate": b.effective_drain_rate(cfg) if b.state == bk.HALF_OPEN else None})
        return _json({"breakers": out, "config": {"window_s": cfg.window_s, "trip_ratio": cfg.trip_ratio,
                                                   "min_rate": cfg.min_rate, "drain_rate": cfg.drain_rate,
                                                   "bypass_priority": cfg.bypass_priority}})

    async def change_breaker(request: web.Request) -> web.Response:
        who = operator(request)
        if who is None:
            return unauthorized()
        key, action = request.match_info["key"], request.match_info["action"]
        if not known_key(key):
            return _error(404, f"unknown breaker {key!r}: use channel:<{'|'.join(CHANNELS)}> or sku:<catalog SKU>")
        now = time.time()
        params: dict[str, Any] = {}
        if action == "trip":
            change = lambda b: bk.trip(b, now, f"tripped by {who}")  # noqa: E731
        elif action == "close":
            change = lambda b: bk.close(b, now)  # noqa: E731
        elif action == "drain":
            raw = request.query.get("rate")
            rate = None
            if raw is not None:
                try:
                    rate = float(raw)
                except ValueError:
                    rate = -1.0
                if not (0 < rate <= 100_000):
                    return _error(400, "rate must be a number of orders/s in (0, 100000]")
                params["rate"] = rate
            change = lambda b: bk.drain(b, now, rate)  # noqa: E731
        else:
            return _error(404, f"unknown action {action!r}: trip, close or drain")
        b = await store.update(key, change)
        await audit(who, f"breaker.{action}", key, **params)
        return _json({"key": key, "state": b.state, "since": b.since})

    async def list_review(request: web.Request) -> web.Response:
        try:
            offset = int(request.query.get("offset", "0"))
            limit = int(request.query.get("limit", "50"))
        except ValueError:
            return _error(400, "offset and limit must be integers")
        if offset < 0 or not 1 <= limit <= 500:
            return _error(400, "offset >= 0 and 1 <= limit <= 500")
        key = request.query.get("key")
        if key is not None and not known_key(key):
            return _error(404, f"unknown breaker {key!r}")
        total, entries = await store.held_page(offset, limit, key)
        return _json({"total": total, "offset": offset, "limit": limit, "held": entries})

    async def decide(request: web.Request) -> web.Response:
        who = operator(request)
        if who is None:
            return unauthorized()
        order_id, action = request.match_info["order_id"], request.match_info["action"]
        if action not in ("approve", "reject"):
            return _error(404, f"unknown action {action!r}: approve or reject")
        entry = await store.unhold(order_id)
        if entry is None:
            return _error(404, f"order {order_id!r} is not held for review")
        outcome = "release" if action == "approve" else "reject"
        control = {"replies": [{"outcome": outcome, "order_id": order_id, "by": f"operator:{who}",
                                 "breaker": entry.get("key")}]}
        await sink.write(STOCK_REPLIES, None, orjson.dumps(control), partition=int(entry["partition"]))
        await audit(who, f"review.{action}", order_id, breaker=entry.get("key"))
        return _json({"order_id": order_id, "action": action, "breaker": entry.get("key")})

    app.router.add_get("/breakers", list_breakers)
    app.router.add_post("/breakers/{key}/{action}", change_breaker)
    app.router.add_get("/review", list_review)
    app.router.add_post("/review/{order_id}/{action}", decide)
