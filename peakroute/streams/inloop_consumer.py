"""faust's aiokafka consumer on the worker's own event loop instead of a thread of its own.

Why: faust runs aiokafka's consumer in a dedicated thread with its own event loop (mode's
``ServiceThread``), on the same interpreter as the agents, so both fight for one GIL.  Measured at
400 orders/s (benchmarks/RESULTS.md, 2026-12-04 evening, py-spy ``--native --threads``): that thread
spent 71% of its samples idle in epoll and 26% waiting for the GIL after every timer and
cross-thread callback, and under 1% in aiokafka's own Python, while costing ~26% of a core; the
main thread sat in lock waits ~12% of its samples.  Every ``getmany``, commit and position query
crosses threads twice (a queue, a future, ``call_soon_threadsafe``).

What changes: :class:`InLoopConsumerThread` is faust's ``AIOKafkaConsumerThread`` whose "thread
loop" *is* the worker's loop: ``start`` runs the service's serve coroutine as a task instead of in a
new thread, ``call_thread`` awaits the call directly, and stopping never sweeps the loop's other
tasks (the thread version cancels everything left on its private loop).  aiokafka's heartbeat and
fetch tasks then share the loop with the agents, so a batch that holds the loop for long delays
them; the agents' batches are bounded (``PEAKROUTE_BATCH_MAX``) and the session timeout is seconds.
Off unless ``PEAKROUTE_CONSUMER_LOOP=shared``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger("peakroute.inloop_consumer")


def install() -> bool:
    """Make faust's aiokafka ``Consumer`` create :class:`InLoopConsumerThread` (once)."""
    from faust.transport.drivers import aiokafka as driver
    from mode import Service
    from mode.utils.futures import maybe_async

    if getattr(driver.Consumer, "_peakroute_inloop", False):
        return True

    class InLoopConsumerThread(driver.AIOKafkaConsumerThread):  # type: ignore[misc,valid-type]
        """faust's consumer "thread", run as a service of the worker's own loop."""

        _serve_task: asyncio.Task | None = None

        def __init__(self, consumer: Any, *, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
            super().__init__(consumer, loop=loop, thread_loop=loop, **kwargs)

        async def start(self) -> None:
            assert not self._thread_started.is_set()
            self._thread_started.set()
            self._thread_running = asyncio.Future(loop=self.parent_loop)
            self._serve_task = self.parent_loop.create_task(self._serve())
            try:
                await self._thread_running  # set by _serve once the consumer has started
            finally:
                self._thread_running = None

        async def stop(self) -> None:
            if self._started.is_set():
                await Service.stop(self)  # sets _stopped: _serve shuts the consumer down and returns
                task = self._serve_task
                if task is not None and task is not asyncio.current_task():
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

        async def _gather_remaining_tasks(self) -> None:
            """The thread version cancels every task left on its private loop; this loop is the
            worker's, and its tasks are not ours to cancel."""

        async def call_thread(self, fun: Any, *args: Any, **kwargs: Any) -> Any:
            return await maybe_async(fun(*args, **kwargs))

        async def cast_thread(self, fun: Any, *args: Any, **kwargs: Any) -> None:
            self.parent_loop.create_task(maybe_async(fun(*args, **kwargs)))

    def _new_consumer_thread(self: Any) -> Any:
        return InLoopConsumerThread(self, loop=self.loop, beacon=self.beacon)

    driver.Consumer._new_consumer_thread = _new_consumer_thread  # type: ignore[method-assign]  # noqa: SLF001
    driver.Consumer._peakroute_inloop = True  # type: ignore[attr-defined]
    driver.InLoopConsumerThread = InLoopConsumerThread  # type: ignore[attr-defined]
    return True
