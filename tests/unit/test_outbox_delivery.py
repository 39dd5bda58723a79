"""The outbox reports undelivered records (real librdkafka, no broker: nothing can be delivered).

Delivery reports come for failures only (``delivery.report.only.error``): a batch must still
learn that its effects are not durable, or it would remember work whose messages never left."""

from __future__ import annotations

import asyncio

import pytest

from peakroute.streams.outbox import Outbox, OutboxError


def test_an_undeliverable_record_fails_the_flush() -> None:
    outbox = Outbox("127.0.0.1:1", **{"message.timeout.ms": 300, "enable.idempotence": False,
                                      "socket.connection.setup.timeout.ms": 1000})
    outbox.send("peakroute.orders", b"k", b"v", partition=0, timestamp=1.5)
    outbox.send("peakroute.orders", None, b"v2")
    assert outbox.sent == 2
    with pytest.raises(OutboxError, match="not delivered"):
        asyncio.run(outbox.flushed(timeout=10))
