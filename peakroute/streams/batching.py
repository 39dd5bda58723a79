"""Batches of a faust stream whose wait starts when their first message arrived.

faust's ``Stream.take_events(max_, within)`` waits ``within`` seconds *after each batch is done*
before it hands over the next one (unless ``max_`` messages came first), and the messages that
arrived while the batch was processed are not even buffered meanwhile.  So every message that
arrived during a batch waits that batch out *and then* the whole ``within`` again: on a busy worker
a message crosses each agent in (processing + ``within``) even though it was ready to go.  An order
crosses three such batches (its payload, the SKU owner's reservation, the replies).

:func:`take_batches` keeps faust's contract — at most ``max_`` events per batch, events acked only
after the batch was processed (at-least-once: a crash re-reads an unprocessed event) — but buffers
messages while a batch is processed and lets a batch wait only until its *oldest* message is
``within`` old.  Under load a batch is handed over as soon as the previous one is done (the
processing time did the batching); an idle worker still gathers for ``within`` from the first
message.  Measured (benchmarks/RESULTS.md, 2026-12-05): p99 at 400 orders/s 262–303 → 187–245 ms,
~3 points more worker CPU; 800 orders/s held either way.

Messages of the internal topics (stock-ops, stock-replies) are batched upstream already (one per
destination partition per batch), so they may have a wait of their own (``within_by_topic``,
setting ``internal_batch_wait_ms``): a batch goes once any of its events has waited its own wait.
Each batch can be shown to an :class:`Observer` (the agents' :class:`BatchMetrics`: input wait,
buffer wait, batch time and size).

Rebalances: the events buffered during a batch are delivered and unacked until their own batch is
done, like those in faust's own take buffer, so a revocation waits for them (faust's
``wait_empty``) and they are processed and committed before the partitions are given up — where
faust would have dropped the ones still in its channel queue for the next owner to read again.
Either is at-least-once; the agents' ``owned_events`` still sets aside any event whose partition
this worker no longer owns when its batch comes.
"""

from __future__ import annotations

import asyncio
import time
from asyncio import CancelledError
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from mode.utils.aiter import aiter

from ..metrics import registry as m


class Observer(Protocol):
    """Told about each batch: when it is handed to the agent (with the wall-clock time each of its
    events reached the batch buffer, or None where that is not known: faust's own batching) and
    when the agent is done with it (asks for the next)."""

    def handed(self, batch: list[Any], arrivals: list[float] | None) -> None: ...

    def done(self, batch: list[Any], seconds: float) -> None: ...


#: The values of the ``batching`` setting.
MODES = ("arrival", "faust")


def check_mode(how: str) -> str:
    """``how`` if it is a value of the ``batching`` setting; else a ValueError naming the setting."""
    if how not in MODES:
        raise ValueError(f"PEAKROUTE_BATCHING must be arrival or faust, not {how!r}")
    return how


def batches(stream: Any, max_: int, within: float, how: str = "arrival",
            observe: Observer | None = None, within_by_topic: Mapping[str, float] | None = None) -> AsyncIterator[Any]:
    """The batches of ``stream`` the way the ``batching`` setting says (``arrival``: :func:`take_batches`;
    ``faust``: faust's own ``take_events``, which knows no ``within_by_topic``), each shown to
    ``observe`` as it is handed over and when the agent is done with it."""
    if check_mode(how) == "arrival":
        return take_batches(stream, max_, within, observe, within_by_topic)
    if observe is None:
        return stream.take_events(max_, within=within)
    return _observed(stream.take_events(max_, within=within), observe)


async def _observed(batches_: AsyncIterator[list[Any]], observe: Observer) -> AsyncIterator[list[Any]]:
    async for batch in batches_:
        observe.handed(batch, None)
        started = time.perf_counter()
        yield batch
        observe.done(batch, time.perf_counter() - started)


class BatchMetrics:
    """The :class:`Observer` the agents use: per event, ``peakroute_input_wait_seconds`` (its Kafka
    timestamp → its batch's start) and ``peakroute_batch_wait_seconds`` (its arrival in the buffer →
    its batch's start) — which part of a hop is the way to the agent and which is the batching —;
    per batch, ``peakroute_batch_seconds`` and ``peakroute_batch_size`` (batches grow and last longer
    as an agent falls behind)."""

    def __init__(self, agent: str) -> None:
        self.input_wait = m.INPUT_WAIT_SECONDS.labels(agent)
        self.batch_wait = m.BATCH_WAIT_SECONDS.labels(agent)
        self.batch_seconds = m.BATCH_SECONDS.labels(agent)
        self.batch_size = m.BATCH_SIZE.labels(agent)

    def handed(self, batch: list[Any], arrivals: list[float] | None) -> None:
        now = time.time()
        for event in batch:
            stamp = event.message.timestamp
            if stamp:
                self.input_wait.observe(max(0.0, now - stamp))
        if arrivals is not None:
            for arrived_at in arrivals:
                self.batch_wait.observe(max(0.0, now - arrived_at))
        self.batch_size.observe(len(batch))

    def done(self, batch: list[Any], seconds: float) -> None:
        self.batch_seconds.observe(seconds)


async def take_batches(stream: Any, max_: int, within: float, observe: Observer | None = None,
                       within_by_topic: Mapping[str, float] | None = None) -> AsyncIterator[list[Any]]:
    """Yield lists of at most ``max_`` events of ``stream``: each as soon as it is full, or once its
    oldest event has waited ``within`` seconds (see the module's docstring) — or, for an event of a
    topic in ``within_by_topic``, that topic's wait: a batch goes when any of its events has waited
    its own wait out.  Acks each batch's events after the consumer of this generator asks for the
    next batch."""
    events: list[Any] = []
    arrivals: list[float] = []  # time.time() when each of ``events`` arrived (for ``observe``)
    due = 0.0  # time.monotonic() by which the buffered events must be handed over
    arrived = asyncio.Event()  # the buffer went from empty to non-empty
    wake = asyncio.Event()  # look again: the buffer holds max_ events, or its batch is due sooner
    room = asyncio.Event()  # the buffer was handed over: adding may go on
    room.set()

    async def add_to_buffer(value: Any) -> Any:
        nonlocal due
        try:
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_batches found current_event is None")
            wait = within if within_by_topic is None else within_by_topic.get(event.message.topic, within)
            event_due = time.monotonic() + wait
            if not events:
                due = event_due
                arrived.set()
            elif event_due < due:
                due = event_due
                wake.set()  # the batch is due sooner than the loop is waiting for
            events.append(event)
            if observe is not None:
                arrivals.append(time.time())
            if len(events) >= max_:
                # Strict: a batch never holds more than max_ events; this processor (and so the
                # stream) waits until the full buffer is handed over.
                room.clear()
                wake.set()
                await stream.wait(room)
        except CancelledError:  # pragma: no cover
            raise
        except Exception as exc:  # pragma: no cover - as faust's take_events does
            stream.log.exception("Error adding to batch buffer: %r", exc)
            await stream.crash(exc)
        return value

    # This generator acks the events itself, only after their batch was processed.
    stream.enable_acks = False
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))  # noqa: SLF001 - as faust's take_events does
    while not stream.should_stop:
        if not events:
            arrived.clear()
            await stream.wait(arrived)  # returns early if the stream stops (checked above)
            continue
        left = due - time.monotonic()
        if left > 0 and len(events) < max_:
            wake.clear()
            # (mode reports a timeout as "stopped": the loop's condition is what tells)
            await stream.wait(wake, timeout=left)
            continue  # full, due, or due sooner: look again
        batch, events = events, []
        if observe is not None:
            observe.handed(batch, arrivals)
            arrivals = []
        room.set()
        started = time.perf_counter()
        try:
            yield batch
        finally:
            if observe is not None:
                observe.done(batch, time.perf_counter() - started)
            for event in batch:
                await stream.ack(event)
