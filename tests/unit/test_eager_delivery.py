"""``run_until_suspended`` (streams/consumer_fix.py): a record's delivery runs at once, and only a
delivery that really waits is raced against the flow stopping — with the same outcome as if the
whole coroutine had been handed to a task."""

from __future__ import annotations

import asyncio

import pytest

from peakroute.streams.consumer_fix import run_until_suspended


async def put(queue: asyncio.Queue, item: int) -> str:
    await queue.put(item)
    return f"put {item}"


def test_a_delivery_that_does_not_wait_finishes_at_once() -> None:
    async def main() -> None:
        q: asyncio.Queue = asyncio.Queue(maxsize=1)
        finished, result = run_until_suspended(put(q, 1))
        assert finished and result == "put 1" and q.get_nowait() == 1

    asyncio.run(main())


def test_a_delivery_that_waits_is_continued_where_it_stopped() -> None:
    async def main() -> None:
        q: asyncio.Queue = asyncio.Queue(maxsize=1)
        q.put_nowait(0)  # full: the put must wait
        finished, rest = run_until_suspended(put(q, 1))
        assert not finished
        task = asyncio.ensure_future(rest)
        await asyncio.sleep(0)
        assert not task.done()
        assert q.get_nowait() == 0  # room: the put goes on
        assert await asyncio.wait_for(task, 1) == "put 1"
        assert q.get_nowait() == 1

    asyncio.run(main())


def test_the_rest_can_be_raced_and_cancelled_like_the_coroutine() -> None:
    async def main() -> None:
        cleaned: list[str] = []

        async def blocked(ev: asyncio.Event) -> None:
            try:
                await ev.wait()
            finally:
                cleaned.append("finally ran")

        never, stop = asyncio.Event(), asyncio.Event()
        finished, rest = run_until_suspended(blocked(never))
        assert not finished
        delivery = asyncio.ensure_future(rest)
        stopper = asyncio.ensure_future(stop.wait())
        stop.set()
        done, pending = await asyncio.wait({delivery, stopper}, return_when=asyncio.FIRST_COMPLETED)
        assert stopper in done and delivery in pending
        delivery.cancel()
        with pytest.raises(asyncio.CancelledError):
            await delivery
        assert cleaned == ["finally ran"]

    asyncio.run(main())


def test_errors_after_a_wait_and_bare_yields_behave_as_with_await() -> None:
    async def fails_later() -> None:
        await asyncio.sleep(0)  # a bare yield to the loop
        await asyncio.sleep(0.01)
        raise ValueError("bad record")

    async def main() -> None:
        finished, rest = run_until_suspended(fails_later())
        assert not finished
        with pytest.raises(ValueError, match="bad record"):
            await rest

    asyncio.run(main())
