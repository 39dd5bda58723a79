"""The webhook and ops routes over real HTTP (a real aiohttp server on a local port), with in-memory
fakes behind them instead of Kafka and Redis: fast enough to fuzz with hypothesis.

Promises checked: nothing unauthenticated is ever written (webhook) or changed (ops); no request,
however malformed, gets a 5xx; a replay is refused however its signature is re-spelled; every
state-changing route needs the operator token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peakroute.config import Settings
from peakroute.connectors import ops, webhook
from peakroute.connectors.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, signed_headers
from peakroute.domain.catalog import load_catalog

SECRETS = {"tmall": "tmall-unit-secret", "jd": "jd-unit-secret"}  # douyin, wxmini: none (refuse all)
TOKEN = "unit-operator-token"
MAX_BODY = 4096


class FakeSink:
    def __init__(self) -> None:
        self.writes: list[tuple[str, bytes | None, bytes]] = []

    async def write(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None) -> tuple[int, int]:
        self.writes.append((topic, key, value))
        return 0, len(self.writes) - 1


class FakeStore:
    """The breaker store's surface used by ops.py; records every state change."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []

    async def all(self) -> dict:
        return {}

    async def held_count(self, breakers: dict) -> dict:
        return {}

    async def held_page(self, offset: int, limit: int, key: str | None) -> tuple[int, list]:
        return 0, []

    async def update(self, key: str, change: Any) -> Any:
        self.changes.append(("update", key))
        return SimpleNamespace(state="open", since=0.0)

    async def unhold(self, order_id: str) -> dict | None:
        self.changes.append(("unhold", order_id))
        return {"partition": 0, "key": "channel:douyin"}


class BrokenGuard:
    async def first_use(self, token: str, ttl_s: int) -> bool:
        raise ConnectionError("redis down")


class Server:
    """An aiohttp application served on 127.0.0.1 from a background thread."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.runner = web.AppRunner(app, access_log=None)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self.runner.cleanup())

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def request(self, method: str, path: str, headers: dict[str, bytes | str] | None = None,
                body: bytes = b"") -> tuple[int, bytes]:
        """One raw HTTP/1.1 request (headers sent as given bytes, no client-side validation)."""
        lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close",
                 b"Content-Length: " + str(len(body)).encode()]
        for k, v in (headers or {}).items():
            lines.append(k.encode() + b": " + (v if isinstance(v, bytes) else v.encode("utf-8")))
        raw = b"\r\n".join(lines) + b"\r\n\r\n" + body
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(raw)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, payload = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), payload


def _settings(**kw: Any) -> Settings:
    values: dict[str, Any] = {"webhook_secrets": SECRETS, "max_body_bytes": MAX_BODY, "webhook_tolerance_s": 300,
                              "operator_token": TOKEN, **kw}
    return Settings.from_env({}, **values)


@pytest.fixture(scope="module")
def wh() -> Iterator[tuple[Server, FakeSink]]:
    sink = FakeSink()
    app = web.Application(client_max_size=MAX_BODY + 1024)
    webhook.add_routes(app, _settings(), sink, webhook.MemoryReplayGuard())  # type: ignore[arg-type]
    server = Server(app)
    yield server, sink
    server.stop()


@pytest.fixture(scope="module")
def opsapi() -> Iterator[tuple[Server, FakeSink, FakeStore, web.Application]]:
    sink, store = FakeSink(), FakeStore()
    app = web.Application()
    ops.add_routes(app, _settings(), sink, store, load_catalog(None))  # type: ignore[arg-type]
    server = Server(app)
    yield server, sink, store, app
    server.stop()


def _jd_body() -> bytes:
    return b'{"orderId": "%d", "pad": "x"}' % time.time_ns()


# --------------------------------------------------------------------------- webhook


def test_signed_request_is_written_once(wh) -> None:
    server, sink = wh
    body = _jd_body()
    before = len(sink.writes)
    status, _ = server.request("POST", "/channels/jd/orders", signed_headers(SECRETS["jd"], body), body)
    assert status == 202
    assert sink.writes[before:] == [("peakroute.raw.jd", sink.writes[-1][1], body)]


@pytest.mark.parametrize("respell", [
    lambda s: s + " ", lambda s: " " + s, lambda s: s + "\t", lambda s: s.upper(), lambda s: s.replace("sha256", "SHA256"),
    lambda s: s + "\u00a0", lambda s: s + "\u3000", lambda s: s + "\x85", lambda s: s + "\x1f", lambda s: s + ",",
])
def test_replay_with_a_respelled_signature_is_refused(wh, respell) -> None:
    server, sink = wh
    body = _jd_body()
    headers = signed_headers(SECRETS["jd"], body)
    assert server.request("POST", "/channels/jd/orders", headers, body)[0] == 202
    before = len(sink.writes)
    status, resp = server.request("POST", "/channels/jd/orders",
                                  headers | {SIGNATURE_HEADER: respell(headers[SIGNATURE_HEADER])}, body)
    assert status in (400, 401), resp
    assert len(sink.writes) == before, "a replay must never be written"


def test_wrong_channel_secret_and_channel_without_secret_are_refused(wh) -> None:
    server, sink = wh
    body = _jd_body()
    before = len(sink.writes)
    assert server.request("POST", "/channels/jd/orders", signed_headers(SECRETS["tmall"], body), body)[0] == 401
    # douyin has no secret: even a request signed with an empty/any secret is refused (fail closed)
    for secret in ("", "anything", SECRETS["jd"]):
        assert server.request("POST", "/channels/douyin/orders", signed_headers(secret, body), body)[0] == 401
    assert len(sink.writes) == before


@pytest.mark.parametrize("offset", [-301, 301, -86400, 86400, pytest.param(-time.time(), id="epoch")])
def test_stale_or_future_timestamps_are_refused_even_correctly_signed(wh, offset: float) -> None:
    server, sink = wh
    body = _jd_body()
    before = len(sink.writes)
    status, resp = server.request("POST", "/channels/jd/orders",
                                  signed_headers(SECRETS["jd"], body, now=time.time() + offset), body)
    assert status == 401 and b"window" in resp
    assert len(sink.writes) == before


def test_body_limit_is_enforced_with_and_without_content_length(wh) -> None:
    server, sink = wh
    before = len(sink.writes)
    big = b'{"orderId": "1", "pad": "' + b"x" * MAX_BODY + b'"}'
    assert server.request("POST", "/channels/jd/orders", signed_headers(SECRETS["jd"], big), big)[0] == 413
    # chunked: no Content-Length to trust, the server must count
    headers = signed_headers(SECRETS["jd"], big)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(big[i:i + 1000]), big[i:i + 1000]) for i in range(0, len(big), 1000))
    raw = (b"POST /channels/jd/orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n"
           + b"".join(k.encode() + b": " + v.encode() + b"\r\n" for k, v in headers.items())
           + b"\r\n" + chunked + b"0\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.split(b" ", 2)[1] == b"413"
    assert len(sink.writes) == before


def test_replay_guard_down_answers_503_and_writes_nothing() -> None:
    sink = FakeSink()
    app = web.Application()
    webhook.add_routes(app, _settings(), sink, BrokenGuard())  # type: ignore[arg-type]
    server = Server(app)
    try:
        body = _jd_body()
        assert server.request("POST", "/channels/jd/orders", signed_headers(SECRETS["jd"], body), body)[0] == 503
        assert sink.writes == []
    finally:
        server.stop()


_header_value = st.one_of(st.binary(max_size=120).filter(lambda b: b"\r" not in b and b"\n" not in b),
                          st.text(max_size=80).map(lambda t: t.replace("\r", "").replace("\n", "").encode("utf-8")))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(channel=st.sampled_from(["tmall", "jd", "douyin", "wxmini", "amazon", "%00", "..%2F..", "jd%0A"]),
       body=st.binary(max_size=MAX_BODY + 200), ts=st.one_of(st.none(), _header_value,
                                                             st.integers(-10**13, 10**13).map(lambda i: str(i).encode())),
       sig=st.one_of(st.none(), _header_value, st.text("0123456789abcdef", min_size=64, max_size=64)
                     .map(lambda h: ("sha256=" + h).encode())))
def test_fuzzed_headers_and_bodies_never_5xx_and_never_write(wh, channel, body, ts, sig) -> None:
    server, sink = wh
    before = len(sink.writes)
    headers: dict[str, bytes | str] = {"Content-Type": "application/json"}
    if ts is not None:
        headers[TIMESTAMP_HEADER] = ts
    if sig is not None:
        headers[SIGNATURE_HEADER] = sig
    status, _ = server.request("POST", f"/channels/{channel}/orders", headers, body)
    assert status in (400, 401, 404, 413), status
    assert len(sink.writes) == before


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=MAX_BODY))
def test_fuzzed_bodies_correctly_signed_are_all_written_unchanged(wh, body: bytes) -> None:
    """Authentic garbage is the normalize stage's business (dead letter): the edge stores it, 202."""
    server, sink = wh
    ts = int(time.time())
    headers = {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(SECRETS["tmall"], ts, body)}
    status, resp = server.request("POST", "/channels/tmall/orders", headers, body)
    if status == 401:  # the same random body twice within a second is the same signature: a replay
        assert b"replayed" in resp
        return
    assert status == 202, resp
    assert sink.writes[-1][2] == body


# --------------------------------------------------------------------------- ops

#: Every state-changing route, with concrete paths to call.  A new POST/PUT/PATCH/DELETE route
#: fails test_every_mutating_route_is_listed until it is added here (and so tested).
MUTATING = {
    "/breakers/{key}/{action}": ["/breakers/channel:douyin/trip", "/breakers/channel:jd/close",
                                 "/breakers/sku:SKU-LIPSTICK-07/drain?rate=5", "/breakers/channel:tmall/drain"],
    "/review/{order_id}/{action}": ["/review/douyin:6912345678901234567/approve",
                                    "/review/jd:123456789012/reject"],
}


def test_every_mutating_route_is_listed(opsapi) -> None:
    *_, app = opsapi
    found = {r.resource.canonical for r in app.router.routes()
             if r.method not in ("GET", "HEAD", "OPTIONS") and r.resource is not None}
    assert found == set(MUTATING)


BAD_AUTH: list[dict[str, bytes | str]] = [
    {}, {"Authorization": ""}, {"Authorization": "Bearer"}, {"Authorization": "Bearer "},
    {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Bearer x{TOKEN}"},
    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}, {"X-Operator-Token": TOKEN},
    {"Authorization": b"Bearer \xff\xfe\x80"}, {"Authorization": "Bearer " + "\u00e9" * 40},
    {"Authorization": f"Bearer {TOKEN.upper()}"},
]


@pytest.mark.parametrize("path", [p for paths in MUTATING.values() for p in paths])
@pytest.mark.parametrize("auth", range(len(BAD_AUTH)))
def test_mutating_routes_refuse_missing_or_wrong_token(opsapi, path: str, auth: int) -> None:
    server, sink, store, _ = opsapi
    before = (len(sink.writes), len(store.changes))
    status, resp = server.request("POST", path, BAD_AUTH[auth])
    assert status == 401, resp
    assert (len(sink.writes), len(store.changes)) == before, "nothing may change without the token"


@pytest.mark.parametrize("path", [p for paths in MUTATING.values() for p in paths])
def test_mutating_routes_work_with_the_token_and_are_audited(opsapi, path: str) -> None:
    server, sink, store, _ = opsapi
    before = len(sink.writes)
    status, resp = server.request("POST", path, {"Authorization": f"bearer {TOKEN}", "X-Operator": "li.lei"})
    assert status == 200, resp
    audits = [w for w in sink.writes[before:] if w[0] == "peakroute.audit"]
    assert len(audits) == 1 and b'"who":"li.lei"' in audits[0][2]


def test_ops_refuse_everything_when_no_token_is_configured() -> None:
    sink, store = FakeSink(), FakeStore()
    app = web.Application()
    ops.add_routes(app, _settings(operator_token=""), sink, store, load_catalog(None))  # type: ignore[arg-type]
    server = Server(app)
    try:
        for paths in MUTATING.values():
            for path in paths:
                for auth in ({"Authorization": "Bearer "}, {"Authorization": "Bearer x"}, {}):
                    status, resp = server.request("POST", path, auth)
                    assert status == 401 and b"not set" in resp
        assert sink.writes == [] and store.changes == []
    finally:
        server.stop()


def test_token_check_is_constant_time_over_digests(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(ops.hmac, "compare_digest", spy)
    assert ops.token_matches(TOKEN, TOKEN)
    assert not ops.token_matches("short", TOKEN)
    assert not ops.token_matches("\udcff", TOKEN)  # undecodable header bytes: no exception
    assert not ops.token_matches("", "")  # no token configured: nothing matches
    assert all(len(a) == len(b) == 32 for a, b in calls), "compared as equal-length SHA-256 digests"
    assert calls[0][1] == hashlib.sha256(TOKEN.encode()).digest()


@given(st.text(max_size=100))
def test_token_matches_only_the_token(given_token: str) -> None:
    assert ops.token_matches(given_token, TOKEN) == (given_token == TOKEN)


# --------------------------------------------------------------------------- read routes


def test_read_routes_validate_ids_exactly() -> None:
    """A trailing newline (``%0A``) must not pass an id check (``re.match`` with ``$`` would let it)."""
    from peakroute.api import build_api

    app = build_api(_settings(kafka_bootstrap="127.0.0.1:1", redis_url="redis://127.0.0.1:1/0"), use_redis=False)
    server = Server(app)
    try:
        for path in ("/orders/tmall:123%0A", "/orders/tmall:123%0a", "/orders/tmall:%0A", "/orders/amazon:1",
                     "/orders/tmall:1%20OR%201", "/stock/SKU-1%0A", "/stock/..%2F..%2Fetc"):
            status, body = server.request("GET", path)
            assert status in (400, 404), (path, status, body)
            assert status != 404 or path.startswith("/stock/..")  # refused by the id check, not looked up
    finally:
        server.stop()
