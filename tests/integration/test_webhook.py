"""Webhook receiver over real HTTP, writing to real Kafka: only authentic requests get in."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from peakroute.config import CHANNELS, Settings
from peakroute.connectors.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, signed_headers
from peakroute.stack import free_port
from peakroute.streams.topics import raw_topic

from . import samples
from .harness import PeakrouteProcess, end_offsets, read_topic

pytestmark = pytest.mark.integration

SECRETS = {"tmall": "tmall-secret-for-tests", "jd": "jd-secret-for-tests", "douyin": "dy-secret-for-tests"}
# wxmini deliberately has no secret: its webhook must refuse everything (fail closed).


@pytest.fixture(scope="module")
def api(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    settings = replace(stack_settings, webhook_secrets=SECRETS, http_port=port, max_body_bytes=64 * 1024)
    log = Path(tmp_path_factory.mktemp("api")) / "api.log"
    proc = PeakrouteProcess(settings, ["api", "--port", str(port)], log, PEAKROUTE_MAX_BODY_BYTES=str(64 * 1024))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1)
            break
        except OSError:
            assert proc.alive(), proc.output()
            time.sleep(0.2)
    yield settings, base
    proc.stop()
    out = proc.output()
    for secret in SECRETS.values():
        assert secret not in out, "secrets must never be logged"
    for personal in (CLEAR_NAME, CLEAR_PHONE, CLEAR_STREET):
        assert personal not in out, "personal data must never be logged"


# Clear personal data, as a channel that does not mask would send it (posted by the tests below).
CLEAR_NAME, CLEAR_PHONE, CLEAR_STREET = "欧阳娜娜", "13912345678", "文三路477号华星科技大厦"


def with_clear_pii(doc: dict) -> dict:
    c = doc["consigneeInfo"]
    c.update(fullname=CLEAR_NAME, mobile=CLEAR_PHONE, fullAddress="浙江省杭州市西湖区" + CLEAR_STREET)
    return doc


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_signed_order_is_written_unchanged_keyed_by_channel_order_id(api) -> None:
    settings, base = api
    oid, doc = samples.fresh("tmall")
    body = samples.dumps(doc)
    status, resp = post(f"{base}/channels/tmall/orders", body, signed_headers(SECRETS["tmall"], body))
    assert status == 202, resp
    recs = read_topic(settings, raw_topic("tmall"), until=lambda rs: bool(rs), timeout=30,
                      keep=lambda r: r.get("_key") == oid)
    assert recs, "accepted body must be in the raw topic"
    # The record holds the exact bytes: compare via a raw consumer read of the same offset.
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "wh-bytes"})
    c.assign([TopicPartition(raw_topic("tmall"), recs[0]["_partition"], recs[0]["_offset"])])
    msg = c.poll(10)
    c.close()
    assert msg is not None and msg.value() == body and msg.key() == oid.encode()


@pytest.mark.parametrize("case", ["unsigned", "forged", "wrong_channel_secret", "stale", "future", "no_secret"])
def test_unauthentic_requests_get_401_and_are_never_written(api, case: str) -> None:
    settings, base = api
    channel = "wxmini" if case == "no_secret" else "jd"
    oid, doc = samples.fresh(channel)
    body = samples.dumps(doc)
    now = time.time()
    headers = {"Content-Type": "application/json"}
    if case == "forged":
        headers |= {TIMESTAMP_HEADER: str(int(now)), SIGNATURE_HEADER: "sha256=" + "0" * 64}
    elif case == "wrong_channel_secret":
        headers |= signed_headers(SECRETS["tmall"], body)
    elif case == "stale":
        headers |= signed_headers(SECRETS["jd"], body, now=now - 3600)
    elif case == "future":
        headers |= signed_headers(SECRETS["jd"], body, now=now + 3600)
    elif case == "no_secret":
        headers |= signed_headers("anything", body)
    status, resp = post(f"{base}/channels/{channel}/orders", body, headers)
    assert status == 401, resp
    assert b"error" in resp
    leaked = read_topic(settings, raw_topic(channel), until=lambda rs: False, timeout=3,
                        keep=lambda r: r.get("_key") == oid)
    assert leaked == []


def test_replayed_request_is_refused(api) -> None:
    _, base = api
    oid, doc = samples.fresh("douyin")
    body = samples.dumps(doc)
    headers = signed_headers(SECRETS["douyin"], body)
    assert post(f"{base}/channels/douyin/orders", body, headers)[0] == 202
    status, resp = post(f"{base}/channels/douyin/orders", body, headers)
    assert status == 401 and b"replayed" in resp
    # The channel re-sending the same order legitimately signs it anew: accepted.
    time.sleep(1.1)
    assert post(f"{base}/channels/douyin/orders", body, signed_headers(SECRETS["douyin"], body))[0] == 202


def test_oversized_body_gets_413_and_unknown_channel_404(api) -> None:
    _, base = api
    big = b'{"pad": "' + b"x" * (70 * 1024) + b'"}'
    status, _ = post(f"{base}/channels/tmall/orders", big, signed_headers(SECRETS["tmall"], big))
    assert status == 413
    body = b"{}"
    status, _ = post(f"{base}/channels/amazon/orders", body, signed_headers("x", body))
    assert status == 404


def test_signature_binds_timestamp() -> None:
    assert sign("s", 1, b"x") != sign("s", 2, b"x")


def settled_end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """``end_offsets``, retried while a freshly created topic's partitions still elect leaders."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + 60
    while True:
        try:
            return end_offsets(settings, topic, settings.partitions)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def raw_high_watermarks(settings: Settings) -> dict[str, dict[int, int]]:
    return {ch: settled_end_offsets(settings, raw_topic(ch)) for ch in CHANNELS}


@pytest.mark.parametrize("respell", ["trailing-nbsp", "trailing-ideographic-space", "upper-hex", "leading-space"])
def test_replay_with_a_respelled_signature_is_refused_by_the_shared_guard(api, respell: str) -> None:
    settings, base = api
    oid, doc = samples.fresh("jd")
    body = samples.dumps(doc)
    headers = signed_headers(SECRETS["jd"], body)
    assert post(f"{base}/channels/jd/orders", body, headers)[0] == 202
    sig = headers[SIGNATURE_HEADER]
    sig = {"trailing-nbsp": sig + "\u00a0", "trailing-ideographic-space": sig + "\u3000",
           "upper-hex": sig.upper(), "leading-space": " " + sig}[respell]
    status, resp = post_raw(base, "/channels/jd/orders", body, headers | {SIGNATURE_HEADER: sig})
    assert status in (400, 401), resp
    recs = read_topic(settings, raw_topic("jd"), until=lambda rs: len(rs) > 1, timeout=5,
                      keep=lambda r: r.get("_key") == oid)
    assert len(recs) == 1, "a replayed request must never be written twice"


def test_replay_to_a_second_api_process_is_refused(api, tmp_path: Path) -> None:
    """The replay guard lives in Redis: every api process behind a load balancer refuses a replay."""
    settings, base = api
    port = free_port()
    other = PeakrouteProcess(settings, ["api", "--port", str(port)], tmp_path / "api2.log")
    try:
        base2 = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(base2 + "/healthz", timeout=1)
                break
            except OSError:
                assert other.alive(), other.output()
                time.sleep(0.2)
        _, doc = samples.fresh("tmall")
        body = samples.dumps(doc)
        headers = signed_headers(SECRETS["tmall"], body)
        assert post(f"{base}/channels/tmall/orders", body, headers)[0] == 202
        status, resp = post(f"{base2}/channels/tmall/orders", body, headers)
        assert status == 401 and b"replayed" in resp
    finally:
        other.stop()


def test_chunked_oversized_body_gets_413_and_is_not_written(api) -> None:
    settings, base = api
    before = raw_high_watermarks(settings)
    big = b'{"orderId": "1", "pad": "' + b"x" * (70 * 1024) + b'"}'
    headers = signed_headers(SECRETS["jd"], big)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(big[i:i + 4096]), big[i:i + 4096]) for i in range(0, len(big), 4096))
    port = int(base.rsplit(":", 1)[1])
    raw = (b"POST /channels/jd/orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n"
           + b"".join(k.encode() + b": " + v.encode() + b"\r\n" for k, v in headers.items()) + b"\r\n"
           + chunks + b"0\r\n\r\n")
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.split(b" ", 2)[1] == b"413"
    assert raw_high_watermarks(settings) == before


def post_raw(base: str, path: str, body: bytes, headers: dict[str, str] | dict[str, bytes]) -> tuple[int, bytes]:
    """A request sent byte for byte (no client-side header validation)."""
    import socket

    port = int(base.rsplit(":", 1)[1])
    lines = [f"POST {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close",
             b"Content-Length: " + str(len(body)).encode()]
    for k, v in headers.items():
        lines.append(k.encode() + b": " + (v if isinstance(v, bytes) else v.encode("utf-8")))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload


_header_value = st.one_of(
    st.binary(max_size=100).filter(lambda b: b"\r" not in b and b"\n" not in b),
    st.text(max_size=80).map(lambda t: t.replace("\r", "").replace("\n", "").encode("utf-8")),
    st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: ("sha256=" + h).encode()),
    st.integers(-10**13, 10**13).map(lambda i: str(i).encode()))


def test_fuzzed_requests_over_real_http_never_5xx_and_never_write(api) -> None:
    """Random channels, bodies (random bytes, real payloads with personal data, oversized) and
    header values against the real api: every answer is 401/404/413 (or 400 for what HTTP itself
    refuses), never a 5xx, and no raw topic grows."""
    settings, base = api
    before = raw_high_watermarks(settings)
    _, jd = samples.fresh("jd")
    real = samples.dumps(with_clear_pii(jd))
    statuses: list[int] = []

    @hsettings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(channel=st.sampled_from([*CHANNELS, "amazon", "%2e%2e", "jd%0a"]),
           body=st.one_of(st.binary(max_size=2000), st.just(real), st.just(b"x" * (64 * 1024 + 1))),
           ts=st.one_of(st.none(), _header_value, st.just(str(int(time.time())).encode())),
           sig=st.one_of(st.none(), _header_value))
    def run(channel: str, body: bytes, ts: bytes | None, sig: bytes | None) -> None:
        headers: dict[str, bytes] = {"Content-Type": b"application/json"}
        if ts is not None:
            headers[TIMESTAMP_HEADER] = ts
        if sig is not None:
            headers[SIGNATURE_HEADER] = sig
        status, resp = post_raw(base, f"/channels/{channel}/orders", body, headers)
        statuses.append(status)
        assert status in (400, 401, 404, 413), (status, resp[:200])

    run()
    assert 401 in statuses and len(statuses) >= 100
    assert raw_high_watermarks(settings) == before, "an unauthentic request was written"


def test_signed_payload_with_personal_data_is_stored_unchanged_and_not_logged(api) -> None:
    """Raw topics keep the channel's bytes (by design); the api's log (checked when the fixture
    stops) never shows the personal data, whether the request was accepted or refused."""
    settings, base = api
    oid, doc = samples.fresh("jd")
    body = orjson.dumps(with_clear_pii(doc))
    assert post(f"{base}/channels/jd/orders", body, signed_headers(SECRETS["jd"], body))[0] == 202
    assert post(f"{base}/channels/jd/orders", body, signed_headers(SECRETS["tmall"], body))[0] == 401
    recs = read_topic(settings, raw_topic("jd"), until=lambda rs: bool(rs), timeout=30,
                      keep=lambda r: r.get("_key") == oid)
    assert recs and recs[0]["consigneeInfo"]["mobile"] == CLEAR_PHONE
