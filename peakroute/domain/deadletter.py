"""Dead-letter records: why an input was refused, where it came from, and the input itself.

Ops must be able to fix and replay a dead letter without access to the source system, so the
record carries the original bytes (base64, plus the text when it is valid UTF-8) and its exact
source position.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

#: Cap on the text copy of a payload in a DLQ record (the base64 copy is always complete).
MAX_TEXT_COPY = 64 * 1024


@dataclass(frozen=True)
class Source:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


def utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def dead_letter(
    *, reason: str, field: str | None, detail: str, channel: str | None, stage: str,
    source: Source, key: bytes | None, payload: bytes | None,
) -> dict[str, Any]:
    """The DLQ record (``peakroute.dlq`` value) for one refused input."""
    text: str | None
    try:
        text = payload.decode("utf-8") if payload is not None else None
    except UnicodeDecodeError:
        text = None
    if text is not None and len(text) > MAX_TEXT_COPY:
        text = None
    return {
        "reason": reason,
        "field": field,
        "detail": detail,
        "channel": channel,
        "stage": stage,
        "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset,
                   "timestamp_ms": source.timestamp_ms},
        "key": key.decode("utf-8", "replace") if key is not None else None,
        "payload": text,
        "payload_b64": base64.b64encode(payload).decode("ascii") if payload is not None else None,
        "payload_bytes": len(payload) if payload is not None else 0,
        "rejected_at": utc_now_iso(),
    }
