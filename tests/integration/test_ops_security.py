"""Ops API over real HTTP against the real api process, Kafka and Redis: no state change without the
operator token, nothing audited for refused calls, the token never logged."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from peakroute.config import Settings
from peakroute.stack import free_port
from peakroute.streams.topics import AUDIT

from .harness import PeakrouteProcess, end_offsets

pytestmark = pytest.mark.integration

TOKEN = "ops-security-token-for-tests-5b0c"
MUTATING = ["/breakers/channel:wxmini/trip", "/breakers/channel:wxmini/close", "/breakers/channel:wxmini/drain?rate=3",
            "/review/douyin:6912345678901234599/approve", "/review/jd:123456789099/reject"]
BAD_AUTH = [None, "", "Bearer", "Bearer wrong", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN]


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


def start_api(settings: Settings, log: Path, **env: str) -> tuple[PeakrouteProcess, str]:
    port = free_port()
    proc = PeakrouteProcess(replace(settings, http_port=port), ["api", "--port", str(port)], log, **env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1)
            return proc, base
        except OSError:
            assert proc.alive(), proc.output()
            time.sleep(0.2)
    raise AssertionError("api did not start")


def call(base: str, method: str, path: str, authorization: str | None) -> tuple[int, dict]:
    headers = {"X-Operator": "it-tester"}
    if authorization is not None:
        headers["Authorization"] = authorization
    req = urllib.request.Request(base + path, method=method, headers=headers,
                                 data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def ops_api(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    log = Path(tmp_path_factory.mktemp("ops")) / "api.log"
    proc, base = start_api(stack_settings, log, PEAKROUTE_OPERATOR_TOKEN=TOKEN)
    yield stack_settings, base
    proc.stop()
    assert TOKEN not in proc.output(), "the operator token must never be logged"


def breaker(base: str, key: str) -> dict | None:
    status, body = call(base, "GET", "/breakers", None)
    assert status == 200
    return next((b for b in body["breakers"] if b["key"] == key), None)


def test_every_state_change_without_the_right_token_is_refused_and_changes_nothing(ops_api) -> None:
    settings, base = ops_api
    audit_before = settled_end_offsets(settings, AUDIT)
    state_before = breaker(base, "channel:wxmini")
    for path in MUTATING:
        for auth in BAD_AUTH:
            status, body = call(base, "POST", path, auth)
            # 401 before anything else: a refused caller cannot even learn whether an order is held
            assert status == 401, (path, auth, status, body)
    assert breaker(base, "channel:wxmini") == state_before
    assert settled_end_offsets(settings, AUDIT) == audit_before, "refused calls are not audited"


def test_with_the_token_changes_happen_and_are_audited(ops_api) -> None:
    settings, base = ops_api
    audit_before = sum(settled_end_offsets(settings, AUDIT).values())
    assert call(base, "POST", "/breakers/channel:wxmini/trip", f"Bearer {TOKEN}")[0] == 200
    assert breaker(base, "channel:wxmini")["state"] == "open"
    assert call(base, "POST", "/breakers/channel:wxmini/close", f"Bearer {TOKEN}")[0] == 200
    assert breaker(base, "channel:wxmini")["state"] in ("closed", "half_open")  # close drains what it held
    # not held: 404 only for an authenticated caller
    assert call(base, "POST", "/review/jd:123456789099/reject", f"Bearer {TOKEN}")[0] == 404
    assert sum(settled_end_offsets(settings, AUDIT).values()) == audit_before + 2


def test_without_a_configured_token_every_state_change_is_refused(stack_settings: Settings, tmp_path: Path) -> None:
    proc, base = start_api(stack_settings, tmp_path / "api.log", PEAKROUTE_OPERATOR_TOKEN="")
    try:
        for path in MUTATING:
            for auth in ["Bearer ", "Bearer anything", None]:
                status, body = call(base, "POST", path, auth)
                assert status == 401 and "not set" in body["error"]
    finally:
        proc.stop()
