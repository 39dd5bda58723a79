"""The struct-based Fetch v11 codec (streams/fetch_codec.py) against aiokafka's own: the same
values from the same bytes, the same bytes from the same values, on generated messages."""

from __future__ import annotations

import random
from io import BytesIO

import pytest
from aiokafka.protocol.fetch import FetchRequest_v11, FetchResponse_v11

from peakroute.streams import fetch_codec

INT32 = (-2**31, 2**31 - 1)
INT64 = (-2**63, 2**63 - 1)


def maybe_none(rng: random.Random, value: object, p: float = 0.1) -> object:
    return None if rng.random() < p else value


def topic_name(rng: random.Random) -> str | None:
    return maybe_none(rng, rng.choice(["peakroute.raw.tmall", "peakroute.internal.stock-ops", "", "订单.topic",
                                       "t" * rng.randint(1, 300)]))  # type: ignore[return-value]


def response(rng: random.Random) -> tuple:
    def partition() -> tuple:
        aborted = maybe_none(rng, [(rng.randint(*INT64), rng.randint(*INT64)) for _ in range(rng.randint(0, 3))], 0.5)
        records = maybe_none(rng, rng.randbytes(rng.choice([0, 1, 61, 5000])), 0.3)
        return (rng.randint(*INT32), rng.randint(-2**15, 2**15 - 1), rng.randint(*INT64), rng.randint(*INT64),
                rng.randint(*INT64), aborted, rng.randint(*INT32), records)

    topics = maybe_none(rng, [(topic_name(rng), maybe_none(rng, [partition() for _ in range(rng.randint(0, 8))]))
                              for _ in range(rng.randint(0, 7))], 0.05)
    return rng.randint(*INT32), rng.randint(-2**15, 2**15 - 1), rng.randint(*INT32), topics


def request(rng: random.Random) -> tuple:
    def parts() -> list | None:
        return maybe_none(rng, [(rng.randint(*INT32), rng.randint(*INT32), rng.randint(*INT64), rng.randint(*INT64),
                                 rng.randint(*INT32)) for _ in range(rng.randint(0, 8))])  # type: ignore[return-value]

    topics = maybe_none(rng, [(topic_name(rng), parts()) for _ in range(rng.randint(0, 7))], 0.05)
    forgotten = maybe_none(rng, [(topic_name(rng), maybe_none(rng, [rng.randint(*INT32) for _ in range(rng.randint(0, 4))]))
                                 for _ in range(rng.randint(0, 2))])
    return (rng.randint(*INT32), rng.randint(*INT32), rng.randint(*INT32), rng.randint(*INT32), rng.randint(-128, 127),
            rng.randint(*INT32), rng.randint(*INT32), topics, forgotten, maybe_none(rng, rng.choice(["", "rack-1"])))


def test_a_response_decodes_to_what_aiokafka_decodes_and_stops_where_it_stops() -> None:
    for seed in range(300):
        check_response(seed)


def check_response(seed: int) -> None:
    rng = random.Random(seed)
    value = response(rng)
    trailer = rng.randbytes(rng.randint(0, 5))  # what follows the body must stay unread
    wire = rng.randbytes(rng.randint(0, 3)) if seed % 2 else b""
    at = len(wire)
    wire += FetchResponse_v11.SCHEMA.encode(value) + trailer
    theirs, ours = BytesIO(wire), BytesIO(wire)
    theirs.seek(at)
    ours.seek(at)
    expected = FetchResponse_v11.SCHEMA.decode(theirs)
    assert fetch_codec.decode_fetch_response(ours) == expected, seed
    assert ours.tell() == theirs.tell() == len(wire) - len(trailer)
    ours.write(b"x")  # the buffer is released: the stream can be used (and grown) again


def test_a_request_encodes_to_aiokafkas_bytes() -> None:
    for seed in range(300):
        value = request(random.Random(seed))
        assert fetch_codec.encode_fetch_request(value) == FetchRequest_v11.SCHEMA.encode(value), seed


def test_a_short_response_is_a_value_error_like_aiokafkas() -> None:
    wire = FetchResponse_v11.SCHEMA.encode(response(random.Random(5)))
    for cut in (3, 12, len(wire) // 2, len(wire) - 1):
        with pytest.raises(ValueError):
            FetchResponse_v11.SCHEMA.decode(BytesIO(wire[:cut]))
        with pytest.raises(ValueError):
            fetch_codec.decode_fetch_response(BytesIO(wire[:cut]))


def test_a_value_that_does_not_fit_is_a_value_error_like_aiokafkas() -> None:
    bad = (-1, 500, 1, 2**40, 0, 0, -1, [], [], "")
    with pytest.raises(ValueError):
        FetchRequest_v11.SCHEMA.encode(bad)
    with pytest.raises(ValueError):
        fetch_codec.encode_fetch_request(bad)


def test_installed_the_classes_use_it_and_still_agree() -> None:
    assert fetch_codec.install() and fetch_codec.install(), "idempotent"
    value = response(random.Random(7))
    wire = FetchResponse_v11.SCHEMA.encode(value)
    decoded = FetchResponse_v11.decode(wire)
    assert isinstance(decoded, FetchResponse_v11) and decoded.topics == value[3] or value[3] is None
    req = FetchRequest_v11(*request(random.Random(8)))
    assert req.encode() == FetchRequest_v11.SCHEMA.encode([req.__dict__[n] for n in FetchRequest_v11.SCHEMA.names])
