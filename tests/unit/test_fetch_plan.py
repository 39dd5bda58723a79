"""The lean fetch plan (streams/fetch_plan.py) against aiokafka's own ``_get_actions_per_node``:
the same requests, resets, backoff, metadata flag and resume futures on generated consumer states."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import pytest
from aiokafka.cluster import ClusterMetadata
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.subscription_state import Assignment
from aiokafka.structs import PartitionMetadata, TopicPartition

from peakroute.streams import fetch_plan

ORIGINAL = Fetcher.__dict__.get("_peakroute_original", Fetcher._get_actions_per_node)
TOPICS = ["peakroute.raw.tmall", "peakroute.raw.jd", "peakroute.internal.stock-ops", "order-routing-changelog"]


class Buffered:
    """A fetched-but-not-consumed result: only its backoff matters to the plan."""

    def __init__(self, backoff: float) -> None:
        self.backoff = backoff

    def calculate_backoff(self) -> float:
        return self.backoff


class Client:
    def __init__(self, cluster: ClusterMetadata) -> None:
        self.cluster = cluster


def consumer_state(rng: random.Random) -> tuple[Fetcher, Assignment]:
    """A fetcher and an assignment in a random but possible state: leaders known, unknown (-1) or
    missing from the metadata; positions valid or awaiting reset; partitions paused, in flight,
    with buffered records that do or do not hold back their node; a preferred replica or none."""
    tps = [TopicPartition(t, p) for t in TOPICS for p in range(rng.randint(0, 8))]
    cluster = ClusterMetadata()
    parts: dict[str, dict[int, PartitionMetadata]] = {}
    for tp in tps:
        roll = rng.random()
        if roll < 0.05:
            continue  # not in the metadata at all
        leader = -1 if roll < 0.1 else rng.choice([0, 0, 0, 1, 2])
        parts.setdefault(tp.topic, {})[tp.partition] = PartitionMetadata(tp.topic, tp.partition, leader, [], [], None)
    if rng.random() < 0.05:
        parts.pop(TOPICS[0], None)
    cluster._partitions = parts  # noqa: SLF001
    assignment = Assignment(tps)
    for tp in tps:
        state = assignment.state_value(tp)
        if rng.random() < 0.85:
            state.seek(rng.randint(0, 10**9))
        if rng.random() < 0.2:
            state.pause()
    fetcher = Fetcher.__new__(Fetcher)
    fetcher._client = Client(cluster)  # noqa: SLF001
    fetcher._records = {tp: Buffered(rng.choice([0, 0, 0.05, 0.2])) for tp in tps if rng.random() < 0.15}  # noqa: SLF001
    fetcher._in_flight = {n for n in (0, 1, 2) if rng.random() < 0.2}  # noqa: SLF001
    fetcher._preferred_read_replica = {}  # noqa: SLF001
    if tps and rng.random() < 0.1:
        cluster._brokers = {1: object()}  # noqa: SLF001 - broker_metadata(1) is known
        fetcher._preferred_read_replica[rng.choice(tps)] = (1, 10**12)  # noqa: SLF001
    fetcher._max_partition_fetch_bytes = rng.choice([1048576, 4096])  # noqa: SLF001
    fetcher._fetch_max_wait_ms = rng.choice([0, 500])  # noqa: SLF001
    fetcher._fetch_min_bytes = rng.choice([1, 65536])  # noqa: SLF001
    fetcher._fetch_max_bytes = 52428800  # noqa: SLF001
    fetcher._isolation_level = rng.choice([0, 1])  # noqa: SLF001
    fetcher._client_rack = rng.choice([None, "", "rack-a"])  # noqa: SLF001
    fetcher._fetcher_timeout = 0.2  # noqa: SLF001
    return fetcher, assignment


def comparable(plan: tuple) -> tuple:
    fetch_requests, awaiting_reset, backoff, invalid_metadata, resume_futures = plan
    requests = [(node, type(req).__name__, vars(req)) for node, req in fetch_requests]
    return (requests, {k: sorted(v) for k, v in awaiting_reset.items()}, backoff, invalid_metadata,
            sorted(map(id, resume_futures)))


@pytest.mark.parametrize("debug", [False, True])
def test_the_lean_plan_is_aiokafkas_on_generated_states(debug: bool) -> None:
    logger = logging.getLogger("aiokafka.consumer.fetcher")
    level = logger.level
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)

    async def compare() -> int:  # Assignment and its partition states make futures: inside a loop
        fetched = 0
        for seed in range(400):
            rng = random.Random(seed)
            fetcher, assignment = consumer_state(rng)
            random.seed(seed)
            theirs = comparable(ORIGINAL(fetcher, assignment))
            random.seed(seed)
            ours = comparable(fetch_plan.get_actions_per_node(fetcher, assignment))
            assert ours == theirs, seed
            fetched += bool(theirs[0])
        return fetched

    try:
        assert asyncio.run(compare()) > 100, "most generated states fetch something"
    finally:
        logger.setLevel(level)


def test_installed_only_over_the_aiokafka_code_it_was_written_for(monkeypatch: pytest.MonkeyPatch) -> None:
    assert fetch_plan.source_digest() == fetch_plan.SOURCE_SHA256, "aiokafka changed: re-check the inlining"
    monkeypatch.setattr(fetch_plan, "SOURCE_SHA256", "0" * 64)
    monkeypatch.delattr(Fetcher, "_peakroute_original", raising=False)
    before: Any = Fetcher.__dict__["_get_actions_per_node"]
    assert fetch_plan.install() is False
    assert Fetcher.__dict__["_get_actions_per_node"] is before
