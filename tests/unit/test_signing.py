"""Webhook signatures (pure): HMAC-SHA256 over timestamp and body, a time window, constant-time compare."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peakroute.connectors.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    sign,
    signed_headers,
    verify,
)

NOW = 1_794_326_400


def test_valid_signature_passes() -> None:
    h = signed_headers("s3cret", b"{}", now=NOW)
    assert verify("s3cret", h[TIMESTAMP_HEADER], h[SIGNATURE_HEADER], b"{}", now=NOW + 5, tolerance_s=300) == NOW


@pytest.mark.parametrize("secret,ts,sig,body,msg", [
    (None, str(NOW), "x", b"{}", "disabled"),
    ("s", None, "x", b"{}", "missing"),
    ("s", str(NOW), None, b"{}", "missing"),
    ("s", "abc", "x", b"{}", "unix seconds"),
    ("s", "-5", "x", b"{}", "unix seconds"),
    ("s", str(NOW - 301), sign("s", NOW - 301, b"{}"), b"{}", "window"),
    ("s", str(NOW + 301), sign("s", NOW + 301, b"{}"), b"{}", "window"),
    ("s", str(NOW), sign("other", NOW, b"{}"), b"{}", "does not match"),
    ("s", str(NOW), sign("s", NOW, b"{}"), b"{ }", "does not match"),
    ("s", str(NOW), sign("s", NOW + 1, b"{}"), b"{}", "does not match"),
])
def test_refusals_say_why(secret, ts, sig, body, msg) -> None:
    with pytest.raises(SignatureError, match=msg):
        verify(secret, ts, sig, body, now=NOW, tolerance_s=300)


@given(st.binary(max_size=200), st.text(max_size=80), st.text(max_size=20))
def test_arbitrary_headers_never_crash_and_never_pass(body: bytes, sig: str, ts: str) -> None:
    try:
        verify("secret", ts, sig, body, now=NOW, tolerance_s=300)
    except SignatureError:
        return
    raise AssertionError("a random signature must not verify")


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=10**12 - 1))
def test_any_body_signed_with_the_secret_verifies(body: bytes, ts: int) -> None:
    assert verify("k", str(ts), sign("k", ts, body), body, now=ts, tolerance_s=1) == ts
