"""Unit tests of the local stack's pure parts: no Kafka, no redis-server is started."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from peakroute import stack
from peakroute.config import Settings
from peakroute.stack import LocalStack, StackError, TopicSpec


def _settings(tmp_path: Path, env: dict[str, str] | None = None, **overrides: object) -> Settings:
    env = {"PEAKROUTE_STATE_DIR": str(tmp_path / "state"), "PEAKROUTE_CACHE_DIR": str(tmp_path / "cache"),
           **(env or {})}
    return Settings.from_env(env=env, **overrides)


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


# --------------------------------------------------------------------------- server.properties


def test_server_properties_single_node_kraft(tmp_path: Path) -> None:
    s = _settings(tmp_path, kafka_bootstrap="127.0.0.1:19092", kafka_controller_port=19093, partitions=4)
    props = _props(stack.render_server_properties(s, tmp_path / "data"))
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["num.partitions"] == "4"
    assert props["auto.create.topics.enable"] == "true"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["log.retention.hours"] == "168"
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr", "share.coordinator.state.topic.replication.factor",
                "share.coordinator.state.topic.min.isr"):
        assert props[key] == "1", key


def test_server_properties_escapes_backslashes(tmp_path: Path) -> None:
    props = _props(stack.render_server_properties(_settings(tmp_path), Path("/a\\b")))
    assert props["log.dirs"] == "/a\\\\b"


def test_server_properties_uses_first_bootstrap_server(tmp_path: Path) -> None:
    s = _settings(tmp_path, kafka_bootstrap="localhost:29092,other:1")
    assert _props(stack.render_server_properties(s, tmp_path))["advertised.listeners"] == "PLAINTEXT://localhost:29092"


@pytest.mark.parametrize("bootstrap, expected", [
    ("127.0.0.1:9092", ("127.0.0.1", 9092)),
    ("broker:1234,other:5", ("broker", 1234)),
    ("PLAINTEXT://h:7", ("h", 7)),
    ("[::1]:9092", ("::1", 9092)),
    ("justhost", ("justhost", 9092)),
])
def test_parse_bootstrap(bootstrap: str, expected: tuple[str, int]) -> None:
    assert stack.parse_bootstrap(bootstrap) == expected


def test_parse_redis_url() -> None:
    assert stack.parse_redis_url("redis://127.0.0.1:6380/0") == ("127.0.0.1", 6380)
    assert stack.parse_redis_url("redis://localhost") == ("localhost", 6379)
    with pytest.raises(StackError, match="only redis://"):
        stack.parse_redis_url("unix:///tmp/redis.sock")


def test_topic_spec_config() -> None:
    assert TopicSpec("t", 3).config() == {}
    assert TopicSpec("t", 3, compacted=True, retention_ms=1000).config() == {
        "cleanup.policy": "compact", "retention.ms": "1000"}
    assert TopicSpec("t", 3, compacted=True, settings={"segment.ms": "5"}).config() == {
        "cleanup.policy": "compact", "segment.ms": "5"}


def test_the_changelogs_are_compacted_on_closed_segments_of_bounded_age() -> None:
    from peakroute.config import Settings
    from peakroute.streams.topics import TABLES, changelog_specs

    specs = changelog_specs(Settings(changelog_segment_ms=600_000))
    assert len(specs) == len(TABLES)
    for spec in specs:
        assert spec.config() == {"cleanup.policy": "compact", "segment.ms": "600000",
                                 "min.cleanable.dirty.ratio": "0.2", "delete.retention.ms": "3600000",
                                 "min.compaction.lag.ms": "300000"}
    # A compressed day (the benchmarks): the lag never exceeds the segment's age.
    assert changelog_specs(Settings(changelog_segment_ms=5000))[0].settings["min.compaction.lag.ms"] == "5000"


def test_cluster_id_looks_like_kafka_uuid() -> None:
    ids = {stack.new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cid in ids:
        assert len(cid) == 22 and not cid.startswith("-")
        assert set(cid) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.mark.parametrize("output, major", [
    ('openjdk version "17.0.15" 2025-04-15', 17),
    ('java version "1.8.0_402"', 8),
    ('openjdk version "21" 2023-09-19', 21),
    ("garbage", None),
])
def test_java_major(output: str, major: int | None) -> None:
    assert stack.java_major(output) == major


# --------------------------------------------------------------------------- ports


def test_port_in_use_detects_a_listener() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        assert stack.port_in_use("127.0.0.1", port)
        assert stack.port_answers("127.0.0.1", port)
    assert not stack.port_in_use("127.0.0.1", port)


def test_free_port_is_bindable() -> None:
    port = stack.free_port()
    assert 0 < port < 65536
    assert not stack.port_in_use("127.0.0.1", port)


def test_up_refuses_a_busy_port_before_starting_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "find_java", lambda: "java")
    monkeypatch.setattr(stack, "ensure_kafka_jars", lambda settings, log=print: tmp_path / "libs")
    monkeypatch.setattr(stack.LocalStack, "_start_kafka", lambda *a: pytest.fail("must not start Kafka"))
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        st = LocalStack(_settings(tmp_path, kafka_bootstrap=f"127.0.0.1:{port}",
                                  kafka_controller_port=stack.free_port()), log=lambda m: None)
        with pytest.raises(StackError) as exc:
            st.up([])
    assert str(exc.value) == (f"port {port} is already in use by another process; "
                              "set PEAKROUTE_KAFKA_BOOTSTRAP to use that server or free the port")
    assert not st.kafka_pid_file.exists()


# --------------------------------------------------------------------------- external servers


def test_env_override_means_external(tmp_path: Path) -> None:
    s = _settings(tmp_path, {"PEAKROUTE_KAFKA_BOOTSTRAP": "10.0.0.1:9092"})
    st = LocalStack(s)
    assert not st.manages_kafka and st.manages_redis
    s = _settings(tmp_path, {"PEAKROUTE_REDIS_URL": "redis://10.0.0.1:6379/0"})
    st = LocalStack(s)
    assert st.manages_kafka and not st.manages_redis
    # Overriding in code (tests, fixtures) keeps the local stack in charge.
    st = LocalStack(_settings(tmp_path, kafka_bootstrap="127.0.0.1:1"))
    assert st.manages_kafka and st.manages_redis


def test_external_servers_are_only_checked(tmp_path: Path) -> None:
    kport, rport = stack.free_port(), stack.free_port()
    s = _settings(tmp_path, {"PEAKROUTE_KAFKA_BOOTSTRAP": f"127.0.0.1:{kport}",
                             "PEAKROUTE_REDIS_URL": f"redis://127.0.0.1:{rport}/0"})
    st = LocalStack(s, log=lambda m: None)
    st.EXTERNAL_TIMEOUT = 0.5
    status = st.status()
    assert status["kafka"]["state"] == "external" and status["kafka"]["pid"] is None
    assert status["redis"]["state"] == "external" and status["redis"]["pid"] is None
    with pytest.raises(StackError, match="PEAKROUTE_REDIS_URL"):
        st.up([])
    st.down()  # nothing of ours to stop: must not fail
    assert not st.pids_dir.exists() and not st.logs_dir.exists()


# --------------------------------------------------------------------------- pid files


def test_pid_file_roundtrip(tmp_path: Path) -> None:
    f = tmp_path / "pids" / "x.pid"
    assert stack.read_pid(f) is None
    stack.write_pid(f, 4242)
    assert stack.read_pid(f) == 4242
    for junk in ("", "abc", "-5", "0", "12 13"):
        f.write_text(junk)
        assert stack.read_pid(f) is None, junk


def test_pid_alive_sees_an_exited_child_as_dead() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not stack.pid_alive(proc.pid)


def test_stale_pid_file_is_stopped_and_cleaned(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    st = LocalStack(_settings(tmp_path), log=lambda m: None)
    stack.write_pid(st.kafka_pid_file, proc.pid)
    stack.write_pid(st.redis_pid_file, proc.pid)
    assert st.status()["kafka"]["state"] == "stopped"
    assert st.status()["redis"]["state"] == "stopped"
    st.down()
    assert not st.kafka_pid_file.exists() and not st.redis_pid_file.exists()


def test_down_never_kills_a_process_it_did_not_start(tmp_path: Path) -> None:
    """A reused pid in a pid file must not get a signal: only our kafka/redis command lines match."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        messages: list[str] = []
        st = LocalStack(_settings(tmp_path), log=messages.append)
        stack.write_pid(st.kafka_pid_file, other.pid)
        assert st.status()["kafka"]["state"] == "stopped"
        st.down()
        assert other.poll() is None
        assert not st.kafka_pid_file.exists()
        assert any(str(other.pid) in m for m in messages)
    finally:
        other.kill()
        other.wait()


def test_stop_pid_terminates(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert stack.pid_alive(proc.pid)
        assert stack.stop_pid(proc.pid, timeout=30) is False  # SIGTERM was enough
        assert proc.wait() != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- jars, tools, logs


def test_cached_jars_skip_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(tmp_path, kafka_version="9.9.9")
    home = Path(s.cache_dir) / "kafka-9.9.9"
    (home / "libs").mkdir(parents=True)
    (home / "libs" / "kafka_2.13-9.9.9.jar").write_bytes(b"")
    (home / ".complete").write_text("ok")
    monkeypatch.setattr(stack.shutil, "which", lambda name: pytest.fail("must not look for mvn"))
    assert stack.ensure_kafka_jars(s, log=lambda m: pytest.fail("must not log")) == (home / "libs").resolve()


def test_incomplete_cache_needs_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(tmp_path, kafka_version="9.9.9")
    (Path(s.cache_dir) / "kafka-9.9.9" / "libs").mkdir(parents=True)  # no marker: interrupted fetch
    monkeypatch.setattr(stack.shutil, "which", lambda name: None)
    with pytest.raises(StackError, match="Maven not found"):
        stack.ensure_kafka_jars(s, log=lambda m: None)


def test_bad_kafka_version_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="bad Kafka version"):
        stack.ensure_kafka_jars(_settings(tmp_path, kafka_version="4.1.1; rm -rf /"), log=lambda m: None)


def test_missing_java_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(stack.shutil, "which", lambda name: None)
    with pytest.raises(StackError) as exc:
        stack.find_java()
    assert str(exc.value) == "Java not found: install OpenJDK 17 (apt-get install openjdk-17-jre-headless)"


def test_missing_redis_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "find_redis_server", lambda: None)
    monkeypatch.setattr(stack.os, "geteuid", lambda: 1000)
    with pytest.raises(StackError) as exc:
        stack.ensure_redis_server(log=lambda m: None)
    assert str(exc.value) == "redis-server not found: install it with 'sudo apt-get install redis-server'"


def test_tail_and_logs(tmp_path: Path) -> None:
    f = tmp_path / "x.log"
    assert stack.tail(f, 5) == ""
    f.write_text("".join(f"line {i}\n" for i in range(10000)))
    assert stack.tail(f, 3) == "line 9997\nline 9998\nline 9999"
    st = LocalStack(_settings(tmp_path))
    st.logs_dir.mkdir(parents=True)
    st.kafka_log.write_text("a\nb\nc\n")
    out = st.logs(lines=2)
    assert f"==> {st.kafka_log} <==\nb\nc" in out
    assert f"==> {st.redis_log} <==\n(no log yet)" in out


def test_failure_tail_shows_only_the_last_run(tmp_path: Path) -> None:
    f = tmp_path / "kafka.log"
    f.write_text(f"old 1\nold 2\n{stack.RUN_BANNER} x -----\nnew 1\nnew 2\n")
    assert LocalStack._last_run_tail(f) == "new 1\nnew 2"


def test_kafka_jvm_opts_go_before_the_main_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PEAKROUTE_KAFKA_JVM_OPTS reach the broker's JVM as options (before ``kafka.Kafka``), after
    the project's own, so a later one (another heap size, say) wins."""
    settings = _settings(tmp_path, {"PEAKROUTE_KAFKA_JVM_OPTS": " -XX:TieredStopAtLevel=1  -Xmx2g "})
    local = LocalStack(settings)
    local.kafka_data.mkdir(parents=True)
    (local.kafka_data / "meta.properties").write_text("cluster.id=x\n")  # formatted already: no StorageTool run
    spawned: list[list[str]] = []
    monkeypatch.setattr(LocalStack, "_spawn", lambda self, cmd, *a: spawned.append(cmd))
    local._start_kafka("/usr/bin/java", tmp_path / "libs")
    cmd = spawned[0]
    main = cmd.index("kafka.Kafka")
    assert cmd.index("-XX:TieredStopAtLevel=1") < main and cmd.index("-Xmx2g") < main
    assert cmd.index("-Xmx1g") < cmd.index("-Xmx2g")
    assert "" not in cmd
