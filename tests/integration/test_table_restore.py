"""Bulk table restore (peakroute/tables/restore.py) with the real parts: a changelog on a real Kafka
read by librdkafka into real RocksDB databases, opened as faust's store opens them (raw mode).
Every worker start of the other integration tests restores this way too; this test pins down what
lands in the databases."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
import rocksdict
from confluent_kafka import Producer

from peakroute.stack import LocalStack, TopicSpec
from peakroute.tables import restore
from peakroute.tables.stale import GENERATION_HEADER, LateRecords

from ..conftest import local_stack

pytestmark = pytest.mark.integration

OFFSET_KEY = b"__faust\x00offset__"


def test_changelog_records_land_in_rocksdb_and_a_second_restore_reads_only_the_new_ones(tmp_path: Path) -> None:
    with local_stack(tmp_path / "stack") as settings:
        topic = "restore-test-changelog"
        LocalStack(settings).ensure_topics([TopicSpec(topic, 2, compacted=True)])
        now_ms = int(time.time() * 1000)
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True})

        def send(partition: int, key: str, value: object, generation: int, age_s: float) -> None:
            producer.produce(topic, None if value is None else orjson.dumps(value), orjson.dumps(key),
                             partition=partition, timestamp=now_ms - int(age_s * 1000),
                             headers=[(GENERATION_HEADER, str(generation).encode())])

        send(0, "order-1", {"v": 1}, 5, 60)
        send(0, "order-2", {"v": 2}, 5, 59)
        send(0, "order-1", {"v": 3}, 5, 58)
        send(0, "order-2", None, 5, 57)                 # a tombstone
        send(1, "SKU|WH-EAST", [10, 0, 0], 5, 60)       # owner A
        send(1, "SKU|WH-EAST", [20, 0, 0], 6, 30)       # owner B, after A was declared gone
        send(1, "SKU|WH-EAST", [99, 0, 0], 5, 59)       # A's write, queued before its freeze
        assert producer.flush(30) == 0

        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        dbs = {p: rocksdict.Rdict(str(tmp_path / f"db-{p}"), options) for p in (0, 1)}
        late = LateRecords()

        def run() -> restore.RestoreSummary:
            return restore.restore_partitions(
                bootstrap=settings.kafka_bootstrap, topic=topic,
                persisted={p: None if db.get(OFFSET_KEY) is None else int(db.get(OFFSET_KEY)) for p, db in dbs.items()},
                tps={p: (topic, p) for p in dbs}, dbs=dbs, offset_key=OFFSET_KEY, late=late, max_s=60,
                new_batch=lambda: rocksdict.WriteBatch(raw_mode=True))

        try:
            first = run()
            assert (first.partitions, first.records, first.kept, first.dropped, first.complete) == (2, 7, 6, 1, True)
            assert dbs[0].get(orjson.dumps("order-1")) == orjson.dumps({"v": 3})
            assert dbs[0].get(orjson.dumps("order-2")) is None
            assert dbs[0].get(OFFSET_KEY) == b"3"
            assert dbs[1].get(orjson.dumps("SKU|WH-EAST")) == orjson.dumps([20, 0, 0]), "the late write was restored"
            assert dbs[1].get(OFFSET_KEY) == b"2"

            send(0, "order-3", {"v": 4}, 6, 0)
            assert producer.flush(30) == 0
            second = run()
            assert (second.partitions, second.records, second.complete) == (1, 1, True)
            assert dbs[0].get(orjson.dumps("order-3")) == orjson.dumps({"v": 4})
            assert dbs[0].get(OFFSET_KEY) == b"4"
            assert run().records == 0
        finally:
            for db in dbs.values():
                db.close()


def test_recovery_offset_queries_answer_what_fausts_consumer_path_answers(stack_settings) -> None:
    """tables/recovery.OffsetQueries (faust's recovery's offset queries on their own connection)
    against aiokafka's end_offsets / beginning_offsets (faust's own path), on a real broker, with
    a log start offset moved by a records deletion."""
    import asyncio

    from aiokafka import AIOKafkaConsumer
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient
    from faust.types import TP

    from peakroute.tables.recovery import OffsetQueries

    settings = stack_settings
    topic = f"offset-queries-{time.time_ns()}"
    LocalStack(settings).ensure_topics([TopicSpec(topic, 2)])
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i in range(5):
        producer.produce(topic, b"x", b"k%d" % i, partition=0)
    for i in range(3):
        producer.produce(topic, b"x", b"k%d" % i, partition=1)
    assert producer.flush(30) == 0
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for fut in admin.delete_records([TopicPartition(topic, 0, 2)]).values():
        fut.result(30)
    tps = [TP(topic, 0), TP(topic, 1)]

    async def both() -> tuple[dict, dict, dict, dict]:
        queries = OffsetQueries(settings.kafka_bootstrap)
        own = await queries.query(tps, latest=True), await queries.query(tps, latest=False)
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
        await consumer.start()
        try:
            theirs = await consumer.end_offsets(tps), await consumer.beginning_offsets(tps)
        finally:
            await consumer.stop()
        return (*own, *theirs)

    own_end, own_start, their_end, their_start = asyncio.run(both())
    assert own_end == {tps[0]: 5, tps[1]: 3} == {tp: their_end[tp] for tp in tps}
    assert own_start == {tps[0]: 2, tps[1]: 0} == {tp: their_start[tp] for tp in tps}
