"""Webhook signatures (pure): HMAC-SHA256 over timestamp and body, a time window, constant-time compare."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peakroute.connectors.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    replay_token,
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


@given(st.binary(max_size=100), st.text(max_size=4), st.text(max_size=4), st.booleans())
def test_only_one_spelling_of_a_signature_verifies(body: bytes, prefix: str, suffix: str, upper: bool) -> None:
    """Anything but HTTP's optional spaces/tabs around it changes the verdict, so the replay guard
    (which remembers the accepted spelling) cannot be dodged by re-spelling a captured signature."""
    good = sign("k", NOW, body)
    spelled = prefix + (good.upper() if upper else good) + suffix
    try:
        verify("k", str(NOW), spelled, body, now=NOW, tolerance_s=300)
    except SignatureError:
        assert spelled.strip(" \t") != good
        return
    assert spelled.strip(" \t") == good
    assert replay_token("jd", spelled) == replay_token("jd", good)


def test_malformed_signature_is_refused_before_any_mac() -> None:
    for sig in ["sha256=" + "0" * 63, "sha256=" + "g" * 64, "sha1=" + "0" * 40, "0" * 64, "sha256=" + "A" * 64]:
        with pytest.raises(SignatureError, match="64 lowercase hex"):
            verify("s", str(NOW), sig, b"{}", now=NOW, tolerance_s=300)


def test_replay_token_is_per_channel_and_not_the_signature() -> None:
    sig = sign("s", NOW, b"{}")
    assert replay_token("jd", sig) != replay_token("tmall", sig)
    assert sig[7:] not in replay_token("jd", sig)
