"""The tables' changelog records go through the outbox byte-for-byte as faust would write them."""

from __future__ import annotations

import asyncio
from typing import Any

import faust

from peakroute.streams import codecs  # noqa: F401 - registers the orjson codec
from peakroute.streams.outbox import carry_changelogs


class RecordingOutbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, Any, int | None]] = []
        self.headers: list[Any] = []
        self.flushes = 0

    def send(self, topic: str, key: Any, value: Any, partition: int | None = None, headers: Any = None) -> None:
        self.sent.append((topic, key, value, partition))
        self.headers.append(headers)

    async def flushed(self) -> None:
        self.flushes += 1


def make_table() -> tuple[faust.App, Any]:
    app = faust.App("t-outbox", broker="kafka://127.0.0.1:1", store="memory://", key_serializer="raw",
                    value_serializer="raw")
    schema = faust.Schema(key_serializer="orjson", value_serializer="orjson")
    return app, app.Table("order-state", default=None, partitions=6, schema=schema)


def test_changelog_records_are_what_faust_would_send_and_commit_waits_for_them() -> None:
    # In the worker this runs inside its event loop (faust's FutureMessage is an asyncio future);
    # the test brings its own loop rather than rely on one left behind by an earlier test.
    asyncio.run(changelog_records_go_through_the_outbox())


async def changelog_records_go_through_the_outbox() -> None:
    app, table = make_table()
    faust_would = table.changelog_topic.as_future_message(
        key="tmall:1", value={"status": "routed"}, partition=3,
        key_serializer=table.key_serializer, value_serializer=table.value_serializer).message
    outbox = RecordingOutbox()
    carry_changelogs(app, outbox, [table])

    fut = table.send_changelog(3, "tmall:1", {"status": "routed"})
    table.send_changelog(5, "tmall:1", None, value_serializer="raw")  # what faust sends for `del`

    assert fut.message.partition == 3  # faust's Table.on_key_set reads it
    assert outbox.sent == [
        ("t-outbox-order-state-changelog", faust_would.key, faust_would.value, 3),
        ("t-outbox-order-state-changelog", b'"tmall:1"', None, 5),
    ]
    # Each record names the generation of its writer's assignment (tables/stale.py reads it back).
    assert outbox.headers == [[("peakroute-gen", b"0")]] * 2
    app.consumer_generation_id = 7  # faust sets it at every assignment
    table.send_changelog(3, "tmall:1", {"status": "shipped"})
    assert outbox.headers[-1] == [("peakroute-gen", b"7")]
    # faust's commit awaits producer.flush() before committing offsets: it must wait for the outbox.
    await app.producer.flush()
    assert outbox.flushes == 1


def test_each_agent_gates_on_the_producer_that_carries_its_own_tables(tmp_path, monkeypatch) -> None:
    """The effects gate (agents.common.prior_writes_durable) waits for the agent's own outbox only,
    so each agent's tables must write their changelogs through that same outbox: the routing
    records through the order side's, holds and levels through the SKU owner's.  A table on the
    other lane would not be waited for, and a frozen worker could again send effects computed
    from state that never reached Kafka (the zombie hole the gate closes)."""
    from dataclasses import replace

    from peakroute.agents import fulfillment, stock
    from peakroute.config import Settings
    from peakroute.streams.app import build_app
    from peakroute.streams.outbox import Outbox

    gated: dict[str, Any] = {}
    for name, module in (("order side", fulfillment), ("SKU owner", stock)):
        def register(app: Any, *, _real: Any = module.register, _name: str = name, **kwargs: Any) -> Any:
            gated[_name] = kwargs["outbox"]
            return _real(app, **kwargs)
        monkeypatch.setattr(module, "register", register)
    sent: list[tuple[Any, str]] = []
    monkeypatch.setattr(Outbox, "send", lambda self, topic, *args, **kwargs: sent.append((self, topic)))

    app = build_app(replace(Settings(), kafka_bootstrap="127.0.0.1:1", state_dir=str(tmp_path)))
    for table in app.tables.values():
        table.send_changelog_bytes(0, b"k", b"v")
    by_table = {topic.removeprefix(f"{app.conf.id}-").removesuffix("-changelog"): outbox for outbox, topic in sent}
    assert set(by_table) == {"order-routing", "stock-levels", "stock-holds"}, sorted(by_table)
    assert gated["order side"] is not gated["SKU owner"]
    assert by_table["order-routing"] is gated["order side"]
    assert by_table["stock-levels"] is gated["SKU owner"] and by_table["stock-holds"] is gated["SKU owner"]
