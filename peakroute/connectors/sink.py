"""An asyncio face on confluent-kafka's producer: ``await sink.write(...)`` returns only once Kafka
acknowledged the record (acks=all), so a caller never tells a channel "accepted" too early.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message

from ..config import Settings
from .kafka import make_producer


class SinkError(Exception):
    """Kafka did not take the record (broker down, timeout, too large)."""


class KafkaSink:
    def __init__(self, settings: Settings, **producer_overrides: Any) -> None:
        self._producer = make_producer(settings, **{"linger.ms": 1, "message.timeout.ms": 15000,
                                                     **producer_overrides})
        self._stop = threading.Event()
        # Delivery callbacks run inside poll(); a dedicated thread keeps them flowing.
        self._poller = threading.Thread(target=self._poll_loop, name="kafka-sink-poll", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def write(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None) -> tuple[int, int]:
        """Write one record; return (partition, offset) after the broker acknowledged it."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[int, int]] = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            def settle() -> None:
                if done.done():
                    return
                if err is not None:
                    done.set_exception(SinkError(str(err)))
                else:
                    done.set_result((msg.partition(), msg.offset()))
            loop.call_soon_threadsafe(settle)

        try:
            if partition is None:
                self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
            else:
                self._producer.produce(topic, value=value, key=key, partition=partition, on_delivery=on_delivery)
        except (BufferError, KafkaException) as exc:
            raise SinkError(str(exc)) from exc
        return await done

    def close(self, timeout: float = 10.0) -> int:
        """Flush what is in flight; return how many records could not be delivered."""
        remaining = self._producer.flush(timeout)
        self._stop.set()
        self._poller.join(timeout=1.0)
        return remaining
