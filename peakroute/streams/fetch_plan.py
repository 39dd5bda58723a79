"""The consumer's per-wake-up fetch plan (aiokafka's ``Fetcher._get_actions_per_node``), lean.

Why: aiokafka's fetch loop (in faust's consumer thread, on the worker's own interpreter and GIL)
wakes twice per fetch round — when a response is buffered and when faust has taken its records —
and each time walks every assigned partition: 61 on a worker at 6 partitions (42 it reads, the
rest paused changelogs), ~300 walks a second at 400 orders/s.  Each step of a walk goes through
four small methods and properties (``state_value``, ``_select_read_replica`` →
``leader_for_partition``, ``has_valid_position``, ``position``) and a ``log.debug`` call.  A
cProfile of that thread on 2026-12-04 put this walk first: ~45% of the thread's profiled time,
above the decoding of the responses.

What is replaced, exactly: the method, by :func:`get_actions_per_node`, which takes the same
decisions in the same order (the same partitions per node, the same ``random.shuffle`` calls, the
same request) with the attribute reads inlined, the preferred-replica lookup skipped while no
preferred replica is known (KIP-392, only with a client rack), and the per-partition debug
message built only when debug logging is on.  tests/unit/test_fetch_plan.py compares it with
aiokafka's own on generated states.  :func:`install` checks that the aiokafka methods it inlines
are the ones it was written for (their source); otherwise it leaves aiokafka alone.
"""

from __future__ import annotations

import collections
import hashlib
import inspect
import logging
import random
from typing import Any

log = logging.getLogger("peakroute.fetch_plan")

#: sha256 of the aiokafka 0.14.0 sources whose behaviour :func:`get_actions_per_node` inlines.
SOURCE_SHA256 = "ec12502998a0b29c011271a8e25582c3e9d96559ad92102f3f38ebee337dbf87"


def _inlined_sources() -> str:
    from aiokafka.cluster import ClusterMetadata
    from aiokafka.consumer.fetcher import Fetcher
    from aiokafka.consumer.subscription_state import Assignment, TopicPartitionState

    parts = [Fetcher.__dict__.get("_peakroute_original", Fetcher._get_actions_per_node),
             Fetcher._select_read_replica, ClusterMetadata.leader_for_partition, Assignment.state_value,
             Assignment.tps.fget, TopicPartitionState.has_valid_position.fget,  # type: ignore[attr-defined]
             TopicPartitionState.position.fget, TopicPartitionState.paused.fget,  # type: ignore[attr-defined]
             TopicPartitionState.resume_fut.fget]  # type: ignore[attr-defined]
    return "\n".join(inspect.getsource(p) for p in parts)


def source_digest() -> str:
    return hashlib.sha256(_inlined_sources().encode()).hexdigest()


def get_actions_per_node(self: Any, assignment: Any) -> tuple:
    """aiokafka's ``Fetcher._get_actions_per_node`` (0.14.0), the same decisions with less work
    per partition: for each assigned partition, fetch it, reset its offset, wait for a resume, or
    back off; grouped by the node to ask."""
    from aiokafka.consumer import fetcher as aiokafka_fetcher

    fetchable: dict[Any, list] = collections.defaultdict(list)
    awaiting_reset: dict[Any, list] = collections.defaultdict(list)
    backoff_by_nodes: dict[Any, list] = collections.defaultdict(list)
    resume_futures = []
    invalid_metadata = False

    records = self._records
    in_flight = self._in_flight
    preferred = self._preferred_read_replica
    cluster = self._client.cluster
    leaders = cluster._partitions  # noqa: SLF001 - ClusterMetadata.leader_for_partition, inlined
    states = assignment._tp_state  # noqa: SLF001 - Assignment.state_value, inlined
    fetcher_log = aiokafka_fetcher.log
    debug = fetcher_log.isEnabledFor(logging.DEBUG)

    for tp in assignment._topic_partitions:  # noqa: SLF001 - Assignment.tps
        tp_state = states.get(tp)
        if preferred:
            node_id = self._select_read_replica(tp)
        else:
            topic_partitions = leaders.get(tp.topic)
            if topic_partitions is None or tp.partition not in topic_partitions:
                node_id = None
            else:
                node_id = topic_partitions[tp.partition].leader
        if tp in records:
            backoff = records[tp].calculate_backoff()
            if backoff:
                backoff_by_nodes[node_id].append(backoff)
        elif node_id in in_flight:
            continue
        elif node_id is None or node_id == -1:
            if debug:
                fetcher_log.debug("No leader found for partition %s. Waiting metadata update", tp)
            invalid_metadata = True
        elif tp_state._position is None:  # noqa: SLF001 - not has_valid_position
            leader_id = cluster.leader_for_partition(tp)
            if leader_id is None or leader_id == -1:
                if debug:
                    fetcher_log.debug("No leader found for partition %s while resetting offset. "
                                      "Waiting metadata update", tp)
                invalid_metadata = True
            else:
                awaiting_reset[leader_id].append(tp)
        elif tp_state._paused:  # noqa: SLF001
            resume_futures.append(tp_state._resume_fut)  # noqa: SLF001
        else:
            position = tp_state._position  # noqa: SLF001
            fetchable[node_id].append((tp, position))
            if debug:
                fetcher_log.debug("Adding fetch request for partition %s at offset %d", tp, position)

    fetch_requests = []
    for node_id, partition_data in fetchable.items():
        if node_id in backoff_by_nodes or node_id in awaiting_reset:
            continue
        random.shuffle(partition_data)  # as aiokafka: a more equal consumption across partitions
        by_topics: dict[str, list] = collections.defaultdict(list)
        max_bytes = self._max_partition_fetch_bytes
        for tp, position in partition_data:
            by_topics[tp.topic].append((tp.partition, position, max_bytes))
        req = aiokafka_fetcher.FetchRequest(
            self._fetch_max_wait_ms, self._fetch_min_bytes, self._fetch_max_bytes, self._isolation_level,
            list(by_topics.items()), rack_id=self._client_rack or "")
        fetch_requests.append((node_id, req))

    backoff = min(map(max, backoff_by_nodes.values())) if backoff_by_nodes else self._fetcher_timeout
    return fetch_requests, awaiting_reset, backoff, invalid_metadata, resume_futures


def install() -> bool:
    """Put :func:`get_actions_per_node` in place of aiokafka's (once); False, and aiokafka
    untouched, unless the aiokafka code it inlines is the code it was written for."""
    try:
        from aiokafka.consumer.fetcher import Fetcher
    except ImportError:  # pragma: no cover - faust's aiokafka transport is our only one
        return False
    if "_peakroute_original" in Fetcher.__dict__:
        return True
    try:
        digest = source_digest()
    except (OSError, TypeError, AttributeError) as exc:  # no sources shipped, or a renamed member
        log.warning("lean fetch plan not installed (aiokafka's own is used): %s", exc)
        return False
    if digest != SOURCE_SHA256:
        log.warning("lean fetch plan not installed (aiokafka's own is used): the aiokafka code it "
                    "inlines changed (sha256 %s)", digest[:12])
        return False
    Fetcher._peakroute_original = Fetcher._get_actions_per_node  # type: ignore[attr-defined]  # noqa: SLF001
    Fetcher._get_actions_per_node = get_actions_per_node  # type: ignore[method-assign]  # noqa: SLF001
    return True
