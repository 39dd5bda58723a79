"""Webhook request signing: HMAC-SHA256 over ``"<timestamp>." + body`` with the channel's secret.

A channel sends ``X-PeakRoute-Timestamp: <unix seconds>`` and
``X-PeakRoute-Signature: sha256=<hex>``.  Binding the timestamp into the MAC and refusing old
timestamps stops replays of captured requests; comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-PeakRoute-Timestamp"
SIGNATURE_HEADER = "X-PeakRoute-Signature"


class SignatureError(Exception):
    """Why a request is not authentic.  The message is safe to return to the caller."""


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signed_headers(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """Headers a channel (or ``peakroute`` tooling) sends with ``body``."""
    ts = int(time.time() if now is None else now)
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(secret, ts, body),
            "Content-Type": "application/json"}


def verify(secret: str | None, timestamp: str | None, signature: str | None, body: bytes,
           *, now: float, tolerance_s: int) -> int:
    """Check a request; return its timestamp, or raise :class:`SignatureError`."""
    if not secret:
        raise SignatureError("webhooks for this channel are disabled (no secret configured)")
    if not timestamp or not signature:
        raise SignatureError("missing signature or timestamp header")
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise SignatureError("timestamp header is not unix seconds")
    ts = int(timestamp)
    if abs(now - ts) > tolerance_s:
        raise SignatureError("timestamp outside the accepted window (stale or replayed request)")
    expected = sign(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode("utf-8", "replace")):
        raise SignatureError("signature does not match")
    return ts
