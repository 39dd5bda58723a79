"""The consumer's Fetch request and response (Kafka protocol v11) in a few ``struct`` calls.

Why: faust runs aiokafka's consumer in a thread of the worker's own interpreter, and aiokafka
encodes every Fetch request and decodes every response field by field through generic Python
schema objects (a generator and a ``BytesIO.read`` per integer).  A worker fetches every partition
it owns in each request — the four raw topics, stock-ops, stock-replies and inventory: 42 at 6
partitions — ~200 times a second under a steady stream, mostly finding nothing new.  Measured
in-process (``benchmarks/micro_fetch_codec.py``): ~180 µs to decode and ~100 µs to encode one such
round, against the consumer thread's ~28% of a core at 400 orders/s (2026-12-04); that thread
holds the GIL the agents need.  On a worker the thread's CPU fell less than the codec's cost
(28.7 → 26.0% in one A/B): its fetch loop is paced by its own round trips, so cheaper rounds
come more often — fresher data (p50 at 400/s ~125 → ~100 ms) more than a freed core.

What is replaced, exactly: ``FetchResponse_v11.decode`` and ``FetchRequest_v11.encode`` — the
same bytes in, the same values out (tests/unit/test_fetch_codec.py compares both with aiokafka's
own on generated messages, including nulls and empty arrays).  :func:`install` checks the two
schemas are the ones this was written for and that both paths agree on a sample; otherwise it
leaves aiokafka alone.  Only v11 (what aiokafka 0.14 asks a Kafka ≥ 2.4 broker for) is touched.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from io import BytesIO
from typing import Any

log = logging.getLogger("peakroute.fetch_codec")

_RESP_HEAD = struct.Struct(">ihi")       # throttle_time_ms, error_code, session_id
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
#: partition, error_code, highwater, last_stable, log_start, then the aborted transactions' count
_PARTITION = struct.Struct(">ihqqqi")
_TAIL = struct.Struct(">ii")             # preferred_read_replica, the records' size
_ABORTED = struct.Struct(">qq")          # producer_id, first_offset
_REQ_HEAD = struct.Struct(">iiiibii")    # replica_id, max_wait, min_bytes, max_bytes, isolation, session id, epoch
_REQ_PARTITION = struct.Struct(">iiqqi")  # partition, leader epoch, fetch_offset, log_start, max_bytes

RESPONSE_FIELDS = ("throttle_time_ms", "error_code", "session_id", "topics")
REQUEST_FIELDS = ("replica_id", "max_wait_time", "min_bytes", "max_bytes", "isolation_level", "session_id",
                  "session_epoch", "topics", "forgotten_topics_data", "rack_id")


def decode_fetch_response(data: BytesIO | bytes) -> tuple:
    """The fields of a FetchResponse v11 body, as aiokafka's schema decodes them: ``(throttle,
    error, session, topics)``, topics ``[(name, [(partition, error, highwater, last_stable,
    log_start, aborted, preferred_replica, records), ...]), ...]``; a null array, string or bytes is
    None.  Reads from ``data``'s position and leaves it after the body, like the schema does."""
    if not isinstance(data, BytesIO):
        data = BytesIO(data)
    try:
        with data.getbuffer() as buf:
            pos, len_buf = data.tell(), len(buf)
            throttle, error, session = _RESP_HEAD.unpack_from(buf, pos)
            pos += 10
            (n_topics,) = _I32.unpack_from(buf, pos)
            pos += 4
            topics: list | None = None if n_topics == -1 else []
            for _ in range(n_topics):
                (length,) = _I16.unpack_from(buf, pos)
                pos += 2
                name = None
                if length >= 0:
                    if pos + length > len_buf:
                        raise ValueError("Buffer underrun decoding string")
                    name = str(buf[pos:pos + length], "utf-8")
                    pos += length
                (n_parts,) = _I32.unpack_from(buf, pos)
                pos += 4
                parts: list | None = None if n_parts == -1 else []
                for _ in range(n_parts):
                    partition, p_error, highwater, last_stable, log_start, n_aborted = _PARTITION.unpack_from(buf, pos)
                    pos += 34
                    if n_aborted == 0:
                        aborted: list | None = []
                    elif n_aborted == -1:
                        aborted = None
                    else:
                        aborted = [_ABORTED.unpack_from(buf, pos + 16 * i) for i in range(n_aborted)]
                        pos += 16 * max(0, n_aborted)
                    replica, size = _TAIL.unpack_from(buf, pos)
                    pos += 8
                    if size >= 0:
                        end = pos + size
                        if end > len_buf:
                            raise ValueError("Buffer underrun decoding Bytes")
                        parts.append((partition, p_error, highwater, last_stable, log_start,  # type: ignore[union-attr]
                                      aborted, replica, bytes(buf[pos:end])))
                        pos = end
                    else:
                        parts.append((partition, p_error, highwater, last_stable, log_start,  # type: ignore[union-attr]
                                      aborted, replica, None))
                topics.append((name, parts))  # type: ignore[union-attr]
    except struct.error as exc:  # aiokafka's decoders say ValueError for a short buffer
        raise ValueError(f"Buffer underrun decoding FetchResponse v11: {exc}") from exc
    data.seek(pos)
    return throttle, error, session, topics


def _string(value: Any) -> bytes:
    if value is None:
        return b"\xff\xff"
    raw = str(value).encode("utf-8")
    return _I16.pack(len(raw)) + raw


def _count(items: Sequence[Any] | None) -> bytes:
    return b"\xff\xff\xff\xff" if items is None else _I32.pack(len(items))


def encode_fetch_request(values: Sequence[Any]) -> bytes:
    """A FetchRequest v11 body from its field values (in :data:`REQUEST_FIELDS` order), byte for
    byte what aiokafka's schema writes."""
    if len(values) != len(REQUEST_FIELDS):
        raise ValueError("Item field count does not match Schema")
    replica, wait, min_bytes, max_bytes, isolation, session, epoch, topics, forgotten, rack = values
    try:
        out = [_REQ_HEAD.pack(replica, wait, min_bytes, max_bytes, isolation, session, epoch), _count(topics)]
        for topic in topics or ():
            name, parts = topic
            out += (_string(name), _count(parts))
            out += [_REQ_PARTITION.pack(*p) for p in parts or ()]
        out.append(_count(forgotten))
        for topic in forgotten or ():
            name, parts = topic
            out += (_string(name), _count(parts))
            out += [_I32.pack(p) for p in parts or ()]
    except struct.error as exc:
        raise ValueError(f"FetchRequest v11: a value does not fit its field: {exc}") from exc
    out.append(_string(rack))
    return b"".join(out)


def _sample() -> tuple[tuple, tuple]:
    response = (0, 0, 0, [("peakroute.raw.tmall", [(0, 0, 12, 12, 0, None, -1, b"records"),
                                                   (1, 3, -1, -1, -1, [(7, 9)], 2, None)]),
                          ("peakroute.internal.stock-ops", [])])
    request = (-1, 500, 1, 52428800, 0, 0, -1,
               [("peakroute.raw.tmall", [(0, -1, 12, -1, 1048576), (1, -1, 0, -1, 1048576)])], [], "")
    return response, request


def install() -> bool:
    """Put the two codecs in place of aiokafka's (once); False, and aiokafka untouched, unless its
    v11 schemas are the ones above and a sample encodes and decodes the same both ways."""
    try:
        from aiokafka.protocol.fetch import FetchRequest_v11, FetchResponse_v11
    except ImportError:  # pragma: no cover - faust's aiokafka transport is our only one
        return False
    if getattr(FetchResponse_v11, "_peakroute_fast", False):
        return True
    try:
        response, request = _sample()
        if (tuple(FetchResponse_v11.SCHEMA.names) != RESPONSE_FIELDS
                or tuple(FetchRequest_v11.SCHEMA.names) != REQUEST_FIELDS):
            raise ValueError("the v11 schemas changed")
        wire = FetchResponse_v11.SCHEMA.encode(response)
        if decode_fetch_response(wire) != FetchResponse_v11.SCHEMA.decode(BytesIO(wire)):
            raise ValueError("a sample response decodes differently")
        if encode_fetch_request(request) != FetchRequest_v11.SCHEMA.encode(request):
            raise ValueError("a sample request encodes differently")
    except Exception as exc:  # noqa: BLE001 - a newer aiokafka: keep its own codecs
        log.warning("fast Fetch codec not installed (aiokafka's own is used): %s", exc)
        return False

    def decode(cls: Any, data: BytesIO | bytes) -> Any:
        return cls(*decode_fetch_response(data))

    def encode(self: Any) -> bytes:
        return encode_fetch_request([self.__dict__[name] for name in REQUEST_FIELDS])

    FetchResponse_v11.decode = classmethod(decode)  # type: ignore[method-assign,assignment]
    FetchRequest_v11.encode = encode  # type: ignore[method-assign]
    FetchResponse_v11._peakroute_fast = True  # type: ignore[attr-defined]  # noqa: SLF001
    return True
