"""Fault scenario 7 (issue 7): poison pills.  Malformed, non-UTF-8, oversized, null and empty
messages on every topic a worker reads — the four raw topics, ``peakroute.orders``,
``peakroute.inventory`` and the internal stock-ops / stock-replies — each become a dead letter
naming the reason and its exact source, carrying the original bytes (or, over 256 KiB, their first
256 KiB, length and SHA-256); the workers keep running (no exit, no restart) and keep routing the
good orders produced at the same time."""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from peakroute.streams.topics import DLQ, INVENTORY, RAW_TOPICS, STOCK_OPS, STOCK_REPLIES

from .faults import Load, finish, scale, scenario
from .harness import read_topic

pytestmark = pytest.mark.integration

OVERSIZED = b'{"tid": "' + b"x" * (700 * 1024) + b'"}'  # 700 KiB: fits Kafka's 1 MB, not twice in a DLQ record
PILLS: dict[str, bytes | None] = {
    "malformed": b'{"tid": "123", "status": ',
    "non_utf8": b'{"tid": "\xff\xfe\x80\x81"}',
    "oversized": OVERSIZED,
    "null": None,
    "empty": b"",
    "not_an_object": b"[1, 2, 3]",
    "wrong_shapes": b'{"ops": "nope", "replies": 7, "lines": "abc", "type": 42}',
}


def test_poison_pills_on_every_input_topic_are_dead_lettered_and_workers_keep_routing(tmp_path: Path) -> None:
    with scenario("poison", tmp_path, workers=2) as sc:
        load = Load(sc.settings, rate=scale(40, 80), duration_s=scale(12, 90), seed=29)
        time.sleep(5)
        delivered: list[tuple[str, str, int, int, bytes | None]] = []
        producer = Producer({"bootstrap.servers": sc.settings.kafka_bootstrap, "enable.idempotence": True,
                             "acks": "all", "message.max.bytes": 2_000_000, "partitioner": "murmur2_random"})

        def remember(kind: str):  # noqa: ANN202
            def cb(err, msg) -> None:  # noqa: ANN001
                assert err is None, err
                delivered.append((kind, msg.topic(), msg.partition(), msg.offset(), msg.value()))
            return cb

        topics = [*RAW_TOPICS, INVENTORY, STOCK_OPS, STOCK_REPLIES]
        for topic in topics:
            for kind, value in PILLS.items():
                for partition in (0, 3):
                    producer.produce(topic, key=f"poison-{kind}".encode(), value=value, partition=partition,
                                     on_delivery=remember(kind))
        assert producer.flush(60) == 0
        sc.note(f"{len(delivered)} poison pills on {len(topics)} topics ({len(PILLS)} kinds x 2 partitions)")
        sc.fault_over()
        report = finish(sc, load)
        # An exit of the commit watch (a stalled commit, see agents/common.py; the supervisor
        # restarts the worker, the audit above checks nothing was lost) is not a poison pill's
        # doing; any other exit is.
        logs = "\n".join(p.read_text(errors="replace") for p in sc.pool.log_dir.glob("*.log"))
        reasons = [line for line in logs.splitlines() if "CRITICAL" in line]
        crashes = [r for r in reasons if "commit-watch:" not in r]
        assert not crashes, f"a poison pill crashed a worker: {report.restarts}: {crashes[:3]}"
        assert all(w.alive() for w in sc.pool.workers)
        # Every pill has its dead letter, with the reason, the exact source and the original bytes.
        want = {(t, p, o): (kind, v) for kind, t, p, o, v in delivered}
        letters = read_topic(sc.settings, DLQ, until=lambda recs: len(recs) >= len(want), timeout=120,
                             keep=lambda r: (r.get("source") or {}).get("topic") in topics)
        by_source = {(r["source"]["topic"], r["source"]["partition"], r["source"]["offset"]): r for r in letters}
        missing = [(t, p, o, want[(t, p, o)][0]) for (t, p, o) in want if (t, p, o) not in by_source]
        assert not missing, f"{len(missing)} poison pills without a dead letter: {missing[:20]}"
        reasons: dict[str, set[str]] = {}
        for src, (kind, value) in want.items():
            rec = by_source[src]
            assert rec["reason"] and rec["detail"], rec
            reasons.setdefault(src[0], set()).add(rec["reason"])
            if value is None:
                assert rec["payload_b64"] is None and rec["payload_bytes"] == 0
            elif rec.get("payload_truncated"):
                assert rec["payload_bytes"] == len(value)
                assert rec["payload_sha256"] == hashlib.sha256(value).hexdigest()
                assert value.startswith(base64.b64decode(rec["payload_b64"]))
            else:
                assert base64.b64decode(rec["payload_b64"]) == value, (src, kind)
        for topic, rs in sorted(reasons.items()):
            sc.note(f"{topic}: dead letters with reasons {sorted(rs)}")
        assert all(r.get("payload_truncated") for src, r in by_source.items() if want[src][0] == "oversized")
