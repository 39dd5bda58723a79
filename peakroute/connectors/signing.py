"""Webhook request signing: HMAC-SHA256 over ``"<timestamp>." + body`` with the channel's secret.

A channel sends ``X-PeakRoute-Timestamp: <unix seconds>`` and
``X-PeakRoute-Signature: sha256=<hex>``.  Binding the timestamp into the MAC and refusing old
timestamps stops replays of captured requests; comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

TIMESTAMP_HEADER = "X-PeakRoute-Timestamp"
SIGNATURE_HEADER = "X-PeakRoute-Signature"
#: The only accepted spelling of a signature (after HTTP's optional spaces/tabs): one spelling per
#: MAC, so a replayed request cannot pass the replay guard by re-spelling its signature.
_SIGNATURE = re.compile(r"sha256=[0-9a-f]{64}")


class SignatureError(Exception):
    """Why a request is not authentic.  The message is safe to return to the caller."""


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8", "surrogateescape"), str(timestamp).encode() + b"." + body, hashlib.sha256)
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
    given = signature.strip(" \t")
    if not _SIGNATURE.fullmatch(given):
        raise SignatureError("signature header is not sha256=<64 lowercase hex digits>")
    expected = sign(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode(), given.encode("ascii")):
        raise SignatureError("signature does not match")
    return ts


def replay_token(channel: str, signature: str) -> str:
    """What the replay guard remembers for a verified request: a digest, not the usable signature."""
    canonical = signature.strip(" \t")
    return hashlib.sha256(f"{channel}:{canonical}".encode("ascii", "replace")).hexdigest()
