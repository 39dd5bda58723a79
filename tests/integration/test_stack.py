"""The local stack for real: Apache Kafka (KRaft) and redis-server on free ports, then stopped."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AdminClient, ConfigResource

from peakroute.config import Settings
from peakroute.stack import LocalStack, TopicSpec, free_port, pid_alive

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None and not os.environ.get("JAVA_HOME"),
                       reason="needs Java 17 to run the Kafka broker"),
]


def _distinct_free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


def test_stack_up_status_down(tmp_path: Path) -> None:
    kafka_port, controller_port, redis_port = _distinct_free_ports(3)
    overrides: dict[str, object] = {}
    if os.environ.get("PEAKROUTE_CACHE_DIR"):  # reuse the developer's jar cache
        overrides["cache_dir"] = os.environ["PEAKROUTE_CACHE_DIR"]
    settings = Settings.from_env(
        env={},  # ignore PEAKROUTE_KAFKA_BOOTSTRAP etc.: this test is about the stack we start
        state_dir=str(tmp_path / "state"),
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        kafka_controller_port=controller_port,
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        partitions=3,
        **overrides,
    )
    topics = [TopicSpec("it.orders.raw", 3), TopicSpec("it.orders.table", 2, compacted=True)]
    messages: list[str] = []
    st = LocalStack(settings, log=messages.append)
    try:
        st.up(topics)

        status = st.status()
        assert status["kafka"]["state"] == "running", st.logs()
        assert status["redis"]["state"] == "running", st.logs()
        kafka_pid, redis_pid = status["kafka"]["pid"], status["redis"]["pid"]
        assert kafka_pid and redis_pid

        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
        md = admin.list_topics(timeout=30)
        assert len(md.brokers) == 1
        assert len(md.topics["it.orders.raw"].partitions) == 3
        assert len(md.topics["it.orders.table"].partitions) == 2
        res = ConfigResource(ConfigResource.Type.TOPIC, "it.orders.table")
        configs = admin.describe_configs([res])[res].result(timeout=30)
        assert configs["cleanup.policy"].value == "compact"
        # A topic's further configs (the changelogs' compaction) are set on an existing topic too:
        # one created by an older release keeps its partitions and gets them.
        with_settings = TopicSpec("it.orders.table", 2, compacted=True, settings={"segment.ms": "123000"})
        st.ensure_topics([with_settings])
        configs = admin.describe_configs([res])[res].result(timeout=30)
        assert (configs["segment.ms"].value, configs["cleanup.policy"].value) == ("123000", "compact")
        del admin  # drop the client now: it would log refused reconnects once the broker stops

        r = redis.Redis.from_url(settings.redis_url)
        try:
            assert r.ping() is True
        finally:
            r.close()

        st.up(topics)  # idempotent: same processes, nothing restarted
        again = st.status()
        assert (again["kafka"]["pid"], again["redis"]["pid"]) == (kafka_pid, redis_pid)
        assert any("already running" in m for m in messages)
    finally:
        st.down()

    status = st.status()
    assert status["kafka"]["state"] == "stopped"
    assert status["redis"]["state"] == "stopped"
    assert not pid_alive(kafka_pid) and not pid_alive(redis_pid)
    assert not st.kafka_pid_file.exists() and not st.redis_pid_file.exists()
