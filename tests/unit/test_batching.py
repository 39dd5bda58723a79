"""Batches whose wait starts at their oldest message's arrival (streams/batching.take_batches), on a
real faust stream over an in-memory channel (no broker: the app is never started)."""

from __future__ import annotations

import asyncio
import time

import faust
import pytest

from peakroute.metrics import registry as m
from peakroute.streams.batching import BatchMetrics, batches, take_batches


def _stream() -> tuple[faust.ChannelT, faust.StreamT, list[object]]:
    app = faust.App("t-batching", broker="kafka://127.0.0.1:1")
    app.flow_control.resume()  # a started app's state: channels accept events
    channel = app.channel()
    stream = channel.clone(is_iterator=True).stream()
    acked: list[object] = []

    async def ack(event: faust.EventT) -> bool:
        acked.append(event.value)
        return True

    stream.ack = ack  # type: ignore[method-assign]
    return channel, stream, acked


async def _run(take: str, schedule: list[tuple[float, int]], *, max_: int, within: float, work_s: float,
               until: float, observe=None, within_by_topic=None) -> list[tuple[list[int], float, list[object]]]:
    """Send ``schedule``'s values at their times; each batch "works" ``work_s``.  Returns each
    batch's values, when it was handed over (s after the start) and what had been acked by then.
    With ``within_by_topic``, odd values come from topic "internal", even ones from "raw"."""
    channel, stream, acked = _stream()
    if within_by_topic is not None:
        def tag(value: int) -> int:
            stream.current_event.message.topic = "internal" if value % 2 else "raw"
            return value

        stream.add_processor(tag)  # runs before the batch buffer's own processor
    got: list[tuple[list[int], float, list[object]]] = []
    t0 = time.monotonic()

    async def consume() -> None:
        async for batch in batches(stream, max_, within, take, observe, within_by_topic):
            got.append(([e.value for e in batch], time.monotonic() - t0, list(acked)))
            await asyncio.sleep(work_s)

    task = asyncio.ensure_future(consume())
    for at, value in schedule:
        await asyncio.sleep(max(0.0, at - (time.monotonic() - t0)))
        await channel.send(value=value)
    await asyncio.sleep(max(0.0, until - (time.monotonic() - t0)))
    task.cancel()
    return got


def test_messages_that_arrived_during_a_batch_go_right_after_it() -> None:
    """0 and 1 arrive together and wait 0.4 s; 2 arrives while their batch is processed (0.8 s).
    By the time that batch is done 2 has waited long enough: handed over at once, not 0.4 s later
    as faust's take_events does (it restarts the whole wait after every batch).  (Times are
    generous: a loaded test machine delays each step by a few tens of ms.)"""
    schedule = [(0.0, 0), (0.0, 1), (0.6, 2)]
    ours = asyncio.run(_run("arrival", schedule, max_=10, within=0.4, work_s=0.8, until=2.6))
    assert [values for values, _, _ in ours] == [[0, 1], [2]]
    first, second = ours[0][1], ours[1][1]
    assert 0.35 <= first < 0.6  # the first batch waited its 0.4 s
    assert second - first == pytest.approx(0.8, abs=0.15)  # right after the 0.8 s of work
    theirs = asyncio.run(_run("faust", schedule, max_=10, within=0.4, work_s=0.8, until=2.6))
    assert [values for values, _, _ in theirs] == [[0, 1], [2]]
    assert theirs[1][1] - theirs[0][1] == pytest.approx(1.2, abs=0.15)  # 0.8 s work + 0.4 s wait again


def test_a_lone_message_waits_for_company_from_its_arrival() -> None:
    """An idle stream still batches: 0 waits up to ``within`` for 1 (0.1 s later)."""
    got = asyncio.run(_run("arrival", [(0.0, 0), (0.1, 1), (1.0, 2)], max_=10, within=0.5, work_s=0.0, until=2.0))
    assert [values for values, _, _ in got] == [[0, 1], [2]]
    assert got[0][1] == pytest.approx(0.5, abs=0.15)
    assert got[1][1] == pytest.approx(1.5, abs=0.15)


def test_at_most_max_per_batch_handed_over_when_full_and_acked_only_after_processing() -> None:
    """A full batch goes at once (no wait); messages beyond ``max_`` wait for the next batch; a
    batch's events are acked only once the consumer asks for the next batch (at-least-once)."""
    got = asyncio.run(_run("arrival", [(0.0, v) for v in range(7)], max_=3, within=5.0, work_s=0.05, until=1.5))
    # 6 is alone after two full batches: it waits its 5 s and is not handed over in this run.
    assert [values for values, _, _ in got] == [[0, 1, 2], [3, 4, 5]]
    assert got[0][1] < 1.0 and got[1][1] < 1.0  # full batches do not wait (the wait is 5 s)
    assert got[0][2] == [] and got[1][2] == [0, 1, 2]  # acked after processing, not before


def test_a_message_of_an_already_batched_topic_waits_its_own_shorter_wait() -> None:
    """Raw payloads (even values) wait up to 0.6 s for company; an internal message (odd) only
    0.1 s, and the batch it joins goes when it is due: 0 (t=0) goes with 1 (t=0.2) at ~0.3, not 0.6."""
    got = asyncio.run(_run("arrival", [(0.0, 0), (0.2, 1), (1.0, 2), (2.0, 3)], max_=10, within=0.6, work_s=0.0,
                           until=2.6, within_by_topic={"internal": 0.1}))
    assert [values for values, _, _ in got] == [[0, 1], [2], [3]]
    assert got[0][1] == pytest.approx(0.3, abs=0.1)
    assert got[1][1] == pytest.approx(1.6, abs=0.15)  # a raw payload alone waits its 0.6 s
    assert got[2][1] == pytest.approx(2.1, abs=0.1)  # an internal message alone waits 0.1 s


def test_an_unknown_batching_setting_is_refused() -> None:
    _, stream, _ = _stream()
    with pytest.raises(ValueError, match="PEAKROUTE_BATCHING"):
        batches(stream, 10, 0.01, "eager")


def test_take_batches_is_what_arrival_means() -> None:
    _, stream, _ = _stream()
    assert batches(stream, 10, 0.01, "arrival").__qualname__ == take_batches.__qualname__  # type: ignore[attr-defined]


def test_the_worker_refuses_an_unknown_batching_setting_at_start(tmp_path) -> None:
    """A typo in PEAKROUTE_BATCHING stops the worker before it consumes anything, not inside an agent."""
    from dataclasses import replace

    from peakroute.config import Settings
    from peakroute.streams.app import build_app

    settings = replace(Settings(), kafka_bootstrap="127.0.0.1:1", state_dir=str(tmp_path), batching="eager")
    with pytest.raises(ValueError, match="PEAKROUTE_BATCHING must be arrival or faust"):
        build_app(settings)


class _Recorder:
    def __init__(self) -> None:
        self.handed_over: list[tuple[list[int], float, list[float] | None]] = []
        self.done_with: list[tuple[list[int], float]] = []

    def handed(self, batch, arrivals) -> None:
        self.handed_over.append(([e.value for e in batch], time.time(), arrivals))

    def done(self, batch, seconds) -> None:
        self.done_with.append(([e.value for e in batch], seconds))


def _observations(take: str, schedule: list[tuple[float, int]], **kw) -> list[tuple[list[int], float, list[float] | None]]:
    recorder = _Recorder()
    asyncio.run(_run(take, schedule, observe=recorder, **kw))
    return recorder.handed_over


def test_each_batch_is_observed_with_when_its_events_arrived() -> None:
    """The observer sees each batch as it is handed over, with each event's arrival in the buffer:
    0 waited its batch's 0.4 s, 1 arrived 0.2 s later; 2 arrived during the first batch's work."""
    seen = _observations("arrival", [(0.0, 0), (0.2, 1), (0.6, 2)], max_=10, within=0.4, work_s=0.8, until=2.6)
    assert [values for values, _, _ in seen] == [[0, 1], [2]]
    (_, handed, arrivals), (_, handed2, arrivals2) = seen
    assert [handed - a for a in arrivals] == [pytest.approx(0.4, abs=0.1), pytest.approx(0.2, abs=0.1)]
    assert handed2 - arrivals2[0] == pytest.approx(0.6, abs=0.15)  # 0.6 → 1.2, the end of the work
    # faust's batching does not say when an event arrived
    assert [arrivals for _, _, arrivals in _observations("faust", [(0.0, 0)], max_=10, within=0.1, work_s=0.0,
                                                          until=0.5)] == [None]


def test_the_observer_hears_when_the_agent_is_done_with_a_batch() -> None:
    """``done`` comes when the agent asks for the next batch: after its 0.3 s of work, both ways."""
    for take in ("arrival", "faust"):
        recorder = _Recorder()
        asyncio.run(_run(take, [(0.0, 0), (0.0, 1), (0.8, 2)], max_=10, within=0.1, work_s=0.3, until=1.8,
                         observe=recorder))
        assert [values for values, _ in recorder.done_with] == [[0, 1], [2]], take
        assert [seconds for _, seconds in recorder.done_with] == [pytest.approx(0.3, abs=0.1)] * 2, take


def test_batch_metrics_record_kafka_time_and_buffer_time_per_event_and_size_and_time_per_batch() -> None:
    class Message:
        def __init__(self, timestamp):
            self.timestamp = timestamp

    class Event:
        def __init__(self, timestamp):
            self.message = Message(timestamp)

    def counts() -> tuple[float, float, float, float]:
        def of(hist, name):
            sample = {s.name: s.value for metric in hist.collect() for s in metric.samples
                      if s.labels.get("agent") == "t-observer"}
            return sample.get(f"{name}_count", 0.0), sample.get(f"{name}_sum", 0.0)
        return (*of(m.INPUT_WAIT_SECONDS, "peakroute_input_wait_seconds"),
                *of(m.BATCH_WAIT_SECONDS, "peakroute_batch_wait_seconds"))

    observer = BatchMetrics("t-observer")
    now = time.time()
    observer.handed([Event(now - 2.0), Event(None), Event(now - 1.0)], [now - 0.5, now - 0.25, now])
    n_input, s_input, n_batch, s_batch = counts()
    assert n_input == 2  # an event without a Kafka timestamp is not counted
    assert s_input == pytest.approx(3.0, abs=0.2)
    assert n_batch == 3 and s_batch == pytest.approx(0.75, abs=0.2)
    observer.handed([Event(now - 1.0)], None)  # faust's batching: no arrivals, input wait only
    assert counts()[0] == 3 and counts()[2] == 3
    observer.done([Event(now)], 0.25)
    sizes = {s.name: s.value for metric in m.BATCH_SIZE.collect() for s in metric.samples
             if s.labels.get("agent") == "t-observer"}
    assert sizes["peakroute_batch_size_count"] == 2 and sizes["peakroute_batch_size_sum"] == 4
    seconds = {s.name: s.value for metric in m.BATCH_SECONDS.collect() for s in metric.samples
               if s.labels.get("agent") == "t-observer"}
    assert seconds["peakroute_batch_seconds_count"] == 1 and seconds["peakroute_batch_seconds_sum"] == 0.25
