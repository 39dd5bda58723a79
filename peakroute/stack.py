"""The local stack: a real Apache Kafka broker (KRaft, single node) and a real redis-server.

Both run as plain detached processes (there is no Docker engine to rely on).  Everything the
stack owns lives under ``Settings.state_dir``::

    kafka/server.properties  kafka/cluster.id  kafka/data/   broker config, identity and log dirs
    redis/                                                  redis working dir (AOF)
    logs/kafka.log  logs/redis.log                          stdout+stderr of each server
    pids/kafka.pid  pids/redis.pid                          the only processes ``down`` will stop

The broker's jars come from Maven Central once (``resources/kafka/pom.xml``) and are cached in
``Settings.cache_dir``.  When ``PEAKROUTE_KAFKA_BOOTSTRAP`` / ``PEAKROUTE_REDIS_URL`` is set, that
server is external: nothing is started or stopped for it, the stack only checks it answers.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from peakroute.config import Settings

__all__ = [
    "StackError",
    "TopicSpec",
    "LocalStack",
    "ensure_kafka_jars",
    "wait_for_kafka",
    "free_port",
    "port_in_use",
    "render_server_properties",
]

RESOURCES = Path(__file__).resolve().parent / "resources" / "kafka"
POM = RESOURCES / "pom.xml"
LOG4J2_CONFIG = RESOURCES / "log4j2.properties"

#: Kafka 4.x brokers need Java 17.
MIN_JAVA = 17
JAVA_HINT = "install OpenJDK 17 (apt-get install openjdk-17-jre-headless)"
REDIS_CANDIDATES = ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server")
#: Logs bigger than this are moved to ``<name>.1`` when a server starts, so they don't grow forever.
LOG_ROTATE_BYTES = 20 * 1024 * 1024

Log = Callable[[str], None]
#: Written to a server's log before each start, so a failure shows only that run's lines.
RUN_BANNER = "----- peakroute stack: starting at"

# Popen objects of the servers started by this process: lets us notice an early exit and reap
# the child (otherwise a stopped child would linger as a zombie and look alive).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_APT_UPDATED = False

# librdkafka logs every refused connection to stderr; while we poll a starting broker that is
# expected, so its logs go to a logger that drops them.
_QUIET = logging.getLogger("peakroute.stack.librdkafka")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


class StackError(Exception):
    """One-line, human-readable error (message is shown as-is to the user)."""


@dataclass
class TopicSpec:
    """A topic the project needs; partition counts are fixed at creation (co-partitioning)."""

    name: str
    partitions: int
    compacted: bool = False
    retention_ms: int | None = None
    #: More topic configs (the changelogs' compaction settings: streams/topics.changelog_config).
    #: Unlike the partition count, these are set on an existing topic too (:func:`ensure_topics_on`).
    settings: dict[str, str] = field(default_factory=dict)

    def config(self) -> dict[str, str]:
        cfg: dict[str, str] = {}
        if self.compacted:
            cfg["cleanup.policy"] = "compact"
        if self.retention_ms is not None:
            cfg["retention.ms"] = str(self.retention_ms)
        return {**cfg, **self.settings}


# --------------------------------------------------------------------------- small pure helpers


def parse_bootstrap(bootstrap: str) -> tuple[str, int]:
    """(host, port) of the first server in a ``host:port[,host:port]`` list (port 9092 default)."""
    first = bootstrap.split(",")[0].strip()
    if "://" in first:
        first = first.split("://", 1)[1]
    host, sep, port = first.rpartition(":")
    if not sep:
        return first or "127.0.0.1", 9092
    host = host.strip("[]") or "127.0.0.1"
    try:
        return host, int(port)
    except ValueError:
        raise StackError(f"bad Kafka bootstrap {bootstrap!r}: expected host:port") from None


def parse_redis_url(url: str) -> tuple[str, int]:
    """(host, port) of a ``redis://`` URL; other schemes cannot be served by a local redis-server."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise StackError(
            f"cannot start a local redis-server for {url!r}: only redis://host:port URLs are supported")
    try:
        port = parts.port or 6379
    except ValueError:
        raise StackError(f"bad redis URL {url!r}: invalid port") from None
    return parts.hostname or "127.0.0.1", port


def _prop(value: str) -> str:
    """Escape a value for a Java .properties file (backslashes are escapes there)."""
    return value.replace("\\", "\\\\")


def render_server_properties(settings: Settings, data_dir: Path) -> str:
    """The single-node KRaft broker+controller config; rewritten on each start so ports follow settings."""
    host, port = parse_bootstrap(settings.kafka_bootstrap)
    cport = settings.kafka_controller_port
    lines = [
        "# Written by `peakroute stack up` on every start; edits are overwritten.",
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{cport}",
        f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://127.0.0.1:{cport}",
        f"advertised.listeners=PLAINTEXT://{host}:{port}",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={_prop(str(data_dir))}",
        f"num.partitions={settings.partitions}",
        "default.replication.factor=1",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        "log.retention.hours=168",
        "num.recovery.threads.per.data.dir=1",
        "",
    ]
    return "\n".join(lines)


def new_cluster_id() -> str:
    """A Kafka cluster id (same format as ``StorageTool random-uuid``) without starting a JVM."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cid.startswith("-"):  # Kafka refuses ids that look like command-line options
            return cid


def java_major(version_output: str) -> int | None:
    """Major Java version from ``java -version`` output (``1.8.0`` -> 8, ``17.0.15`` -> 17)."""
    m = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not m:
        return None
    major = int(m.group(1))
    if major == 1 and m.group(2):
        return int(m.group(2))
    return major


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (for tests that need their own stack)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """True when ``host:port`` can't be bound, i.e. some process already listens there.

    Binding (with SO_REUSEADDR, as the servers do) is more reliable than connecting: it also
    catches listeners that don't accept yet and ignores sockets lingering in TIME_WAIT.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    for family, stype, proto, _, addr in infos:
        with socket.socket(family, stype, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    return True
                # e.g. EADDRNOTAVAIL (not a local address): not "in use"; the server will say why.
    return False


def port_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a (possibly large) text file; '' when missing."""
    if lines <= 0:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            block, data = 8192, b""
            while end > 0 and data.count(b"\n") <= lines:
                step = min(block, end)
                end -= step
                f.seek(end)
                data = f.read(step) + data
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace").rstrip("\n")
    return "\n".join(text.split("\n")[-lines:])


# --------------------------------------------------------------------------- pid files


def write_pid(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def read_pid(path: Path) -> int | None:
    """The pid in ``path``, or None when the file is missing or doesn't hold a positive number."""
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not text.isdigit() or int(text) <= 0:
        return None
    return int(text)


def pid_alive(pid: int) -> bool:
    """True when ``pid`` runs (zombies count as dead; our own exited children get reaped)."""
    child = _CHILDREN.get(pid)
    if child is not None:  # our own child: waitpid is authoritative (and reaps it)
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # Field 3, after the parenthesised command name (which may itself contain spaces or ')').
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def pid_matches(pid: int, needles: Sequence[str]) -> bool:
    """True when the process's command line contains every needle: guards against pid reuse."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc: trust the pid file
    cmdline = raw.replace(b"\0", b" ").decode("utf-8", errors="replace")
    return all(n in cmdline for n in needles)


def stop_pid(pid: int, timeout: float) -> bool:
    """SIGTERM ``pid``, wait up to ``timeout`` s, then SIGKILL.  True if it had to be killed."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_dead(pid, timeout):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_dead(pid, 10.0)
    return True


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    _CHILDREN.pop(pid, None)
    return True


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock so two concurrent `stack up`s (or jar fetches) don't race."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- tools on this machine


def find_java() -> str:
    """Path of ``java`` (JAVA_HOME first, then PATH), checked to be Java 17+."""
    java = None
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        java = str(Path(home) / "bin" / "java")
    java = java or shutil.which("java")
    if not java:
        raise StackError(f"Java not found: {JAVA_HINT}")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StackError(f"could not run {java} -version ({exc}): {JAVA_HINT}") from None
    major = java_major(out.stderr + out.stdout)
    if major is not None and major < MIN_JAVA:
        raise StackError(f"Java {MIN_JAVA}+ is required for Kafka, found Java {major} at {java}: {JAVA_HINT}")
    return java


def find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    return next((p for p in REDIS_CANDIDATES if os.access(p, os.X_OK)), None)


def ensure_redis_server(log: Log = print) -> str:
    """Path of ``redis-server``, installing it with apt-get when running as root."""
    found = find_redis_server()
    if found:
        return found
    return ensure_debian_binary("redis-server", "redis-server", log, find=find_redis_server)


def ensure_debian_binary(binary: str, package: str, log: Log = print,
                         find: Callable[[], str | None] | None = None) -> str:
    """Path of ``binary``; installs Debian's ``package`` with apt-get when missing and running as root.

    Used for redis-server, and for prometheus/promtool in the observability tests.
    """
    find = find or (lambda: shutil.which(binary) or next(
        (p for p in (f"/usr/bin/{binary}", f"/usr/sbin/{binary}") if os.access(p, os.X_OK)), None))
    found = find()
    if found:
        return found
    hint = f"{binary} not found: install it with 'sudo apt-get install {package}'"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StackError(hint)
    # One install at a time on this machine (parallel test processes, two `stack up`s): apt-get
    # refuses to run while another holds dpkg's lock.  Whoever waited finds the binary installed.
    with _file_lock(Path(tempfile.gettempdir()) / "peakroute-apt.lock"):
        found = find()
        if found:
            return found
        return _apt_install(binary, package, hint, log, find)


def _apt_install(binary: str, package: str, hint: str, log: Log, find: Callable[[], str | None]) -> str:
    global _APT_UPDATED
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log(f"installing {package} with apt-get (first run only)…")
    steps = ([] if _APT_UPDATED else [["apt-get", "update"]]) + [
        ["apt-get", "install", "-y", "--no-install-recommends", package]]
    # Keep the package's own system service from starting (it could take our ports): a temporary
    # policy-rc.d tells invoke-rc.d "no services", as Docker images do.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    try:
        if not policy.exists():
            policy.write_text("#!/bin/sh\n# written by peakroute while installing a package\nexit 101\n")
            policy.chmod(0o755)
            made_policy = True
    except OSError:
        pass
    try:
        for cmd in steps:
            try:
                res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise StackError(f"{' '.join(cmd)} failed ({exc}); {hint}") from None
            if res.returncode != 0:
                last = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or [""]
                raise StackError(f"{' '.join(cmd)} failed (exit {res.returncode}: {last[0]}); {hint}")
            if cmd[1] == "update":
                _APT_UPDATED = True
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)
    found = find()
    if not found:
        raise StackError(hint)
    return found


def ensure_kafka_jars(settings: Settings, log: Log = print) -> Path:
    """The directory of the broker's jars, fetched once with Maven into ``cache_dir``.

    A marker file is written only after a complete copy, so an interrupted fetch is redone
    instead of leaving a broker with missing classes.
    """
    version = settings.kafka_version
    if not re.fullmatch(r"[0-9A-Za-z][0-9A-Za-z.\-]*", version):
        raise StackError(f"bad Kafka version {version!r} (PEAKROUTE_KAFKA_VERSION)")
    home = Path(settings.cache_dir).expanduser().resolve() / f"kafka-{version}"
    libs, marker = home / "libs", home / ".complete"
    if marker.exists() and (libs / f"kafka_2.13-{version}.jar").exists():
        return libs
    with _file_lock(home.with_name(home.name + ".lock")):
        if marker.exists() and (libs / f"kafka_2.13-{version}.jar").exists():
            return libs  # another process fetched them while we waited
        mvn = shutil.which("mvn")
        if not mvn:
            raise StackError("Maven not found (needed once to fetch the Kafka jars): "
                             "install it (apt-get install maven)")
        log(f"fetching Kafka {version} jars from Maven Central (first run only)…")
        started = time.monotonic()
        tmp = home / f"libs.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        cmd = [mvn, "-q", "-B", "-f", str(POM), f"-Dkafka.version={version}",
               "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"]
        try:
            res = subprocess.run(cmd, cwd=home, capture_output=True, text=True, timeout=1800)
        except subprocess.TimeoutExpired:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StackError(f"fetching Kafka {version} jars with Maven timed out") from None
        if res.returncode != 0 or not (tmp / f"kafka_2.13-{version}.jar").exists():
            shutil.rmtree(tmp, ignore_errors=True)
            out = (res.stdout + "\n" + res.stderr).splitlines()
            err = next((ln for ln in out if ln.startswith("[ERROR]")), out[-1] if out else "")
            raise StackError(f"could not fetch Kafka {version} jars with Maven (exit {res.returncode}): "
                             f"{err.strip()[:300]}; check PEAKROUTE_KAFKA_VERSION and access to Maven Central")
        marker.unlink(missing_ok=True)
        shutil.rmtree(libs, ignore_errors=True)
        tmp.replace(libs)
        jars = len(list(libs.glob("*.jar")))
        marker.write_text(f"kafka {version}: {jars} jars\n")
        log(f"fetched {jars} jars in {time.monotonic() - started:.0f} s into {libs}")
    return libs


# --------------------------------------------------------------------------- Kafka client side


def _admin(bootstrap: str):  # -> confluent_kafka.admin.AdminClient
    from confluent_kafka.admin import AdminClient

    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "socket.connection.setup.timeout.ms": 5000,
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 500,  # default 10 s would slow down noticing a fresh broker
        "logger": _QUIET,
    }
    return AdminClient(conf)


def wait_for_kafka(bootstrap: str, timeout: float, alive: Callable[[], bool] | None = None) -> None:
    """Return once a broker at ``bootstrap`` answers a metadata request; StackError after ``timeout``.

    ``alive`` (optional) is polled between attempts; when it turns False the wait stops early
    (the broker process died, no point waiting for it).
    """
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout
    admin = _admin(bootstrap)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if alive is not None and not alive():
            raise StackError(f"Kafka at {bootstrap} exited before answering")
        try:
            if admin.list_topics(timeout=max(0.5, min(2.0, remaining))).brokers:
                return
        except KafkaException:
            pass
        time.sleep(0.2)
    raise StackError(f"Kafka at {bootstrap} did not answer within {timeout:.0f} s")


def ensure_topics_on(bootstrap: str, topics: Sequence[TopicSpec], timeout: float = 30.0) -> list[str]:
    """Create missing ``topics`` and wait until every partition has a leader; returns names created.

    An existing topic with a different partition count is an error: partition counts can't be
    lowered and co-partitioned topics must match, so silently carrying on would misroute keys.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    if not topics:
        return []
    admin = _admin(bootstrap)
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise StackError(f"Kafka at {bootstrap} does not answer: {exc.args[0].str()}") from None
    for spec in topics:
        meta = existing.get(spec.name)
        if meta is not None and meta.error is None and len(meta.partitions) != spec.partitions:
            raise StackError(
                f"topic {spec.name!r} exists with {len(meta.partitions)} partitions, expected {spec.partitions}; "
                "partition counts are fixed at creation: delete the topic (or `peakroute stack down --purge`)")
    missing = [s for s in topics if s.name not in existing or existing[s.name].error is not None]
    _align_settings(admin, [s for s in topics if s.settings and s not in missing], timeout)
    created: list[str] = []
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, num_partitions=s.partitions, replication_factor=-1, config=s.config())
             for s in missing],
            operation_timeout=timeout, request_timeout=timeout)
        for name, fut in futures.items():
            try:
                fut.result()
                created.append(name)
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise StackError(f"could not create topic {name!r}: {err.str()}") from None
    _wait_topics_ready(admin, topics, timeout)
    return created


def _align_settings(admin, topics: Sequence[TopicSpec], timeout: float) -> None:  # noqa: ANN001
    """Set the ``settings`` configs of existing topics (created by an older release, or by faust):
    an incremental change of those keys only.  A broker that refuses (no ALTER_CONFIGS right) is
    logged, not fatal — the topics still work, with the broker's defaults."""
    if not topics:
        return
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    resources = [ConfigResource(ResourceType.TOPIC, spec.name, incremental_configs=[
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in sorted(spec.settings.items())])
        for spec in topics]
    for resource, fut in admin.incremental_alter_configs(resources, request_timeout=timeout).items():
        try:
            fut.result()
        except Exception as exc:  # noqa: BLE001
            logging.getLogger("peakroute.stack").warning("topic %s: configs not set (%s); the broker's defaults apply",
                                                         resource.name, exc)


def _wait_topics_ready(admin, topics: Sequence[TopicSpec], timeout: float) -> None:  # noqa: ANN001
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout
    pending: list[str] = [t.name for t in topics]
    while time.monotonic() < deadline:
        try:
            md = admin.list_topics(timeout=5).topics
        except KafkaException:
            md = {}
        pending = []
        for spec in topics:
            t = md.get(spec.name)
            if (t is None or t.error is not None or len(t.partitions) != spec.partitions
                    or any(p.leader < 0 for p in t.partitions.values())):
                pending.append(spec.name)
        if not pending:
            return
        time.sleep(0.2)
    raise StackError(f"topics not ready after {timeout:.0f} s: {', '.join(pending)}")


def _redis_ping(url: str, timeout: float = 1.0) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


# --------------------------------------------------------------------------- the stack


class LocalStack:
    """Starts, checks and stops the local Kafka broker and redis-server of one ``state_dir``."""

    #: Seconds to wait for each step; instances may lower them (tests).
    KAFKA_START_TIMEOUT = 60.0
    REDIS_START_TIMEOUT = 15.0
    EXTERNAL_TIMEOUT = 10.0
    TOPIC_TIMEOUT = 30.0
    STOP_TIMEOUT = 30.0

    def __init__(self, settings: Settings, log: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.log = log
        self.state = Path(settings.state_dir).expanduser().resolve()
        self.kafka_dir = self.state / "kafka"
        self.kafka_data = self.kafka_dir / "data"
        self.kafka_props = self.kafka_dir / "server.properties"
        self.cluster_id_file = self.kafka_dir / "cluster.id"
        self.redis_dir = self.state / "redis"
        self.logs_dir = self.state / "logs"
        self.pids_dir = self.state / "pids"
        self.kafka_log = self.logs_dir / "kafka.log"
        self.redis_log = self.logs_dir / "redis.log"
        self.kafka_pid_file = self.pids_dir / "kafka.pid"
        self.redis_pid_file = self.pids_dir / "redis.pid"

    # -- what this stack is responsible for

    @property
    def manages_kafka(self) -> bool:
        """False when PEAKROUTE_KAFKA_BOOTSTRAP points at a broker someone else runs."""
        return not self.settings.kafka_external

    @property
    def manages_redis(self) -> bool:
        """False when PEAKROUTE_REDIS_URL points at a redis someone else runs."""
        return not self.settings.redis_external

    def _kafka_needles(self) -> list[str]:
        return ["kafka.Kafka", str(self.kafka_props)]

    @staticmethod
    def _redis_needles() -> list[str]:
        return ["redis-server"]  # redis rewrites its argv into "redis-server host:port"

    def _running_pid(self, pid_file: Path, needles: Sequence[str]) -> int | None:
        """The pid from ``pid_file`` if that process is alive and is ours; else None."""
        pid = read_pid(pid_file)
        if pid is None or not pid_alive(pid) or not pid_matches(pid, needles):
            return None
        return pid

    # -- public API

    def up(self, topics: Sequence[TopicSpec]) -> None:
        """Start whatever isn't running yet (idempotent), then make sure ``topics`` exist."""
        with _file_lock(self.state / "stack.lock"):
            kafka_pid = self._running_pid(self.kafka_pid_file, self._kafka_needles()) if self.manages_kafka else None
            redis_pid = self._running_pid(self.redis_pid_file, self._redis_needles()) if self.manages_redis else None
            start_kafka = self.manages_kafka and kafka_pid is None
            start_redis = self.manages_redis and redis_pid is None

            # Preflight everything before starting anything, so a missing tool or busy port
            # doesn't leave half a stack behind.
            java = libs = redis_bin = None
            if start_kafka:
                java = find_java()
                libs = ensure_kafka_jars(self.settings, self.log)
                host, port = parse_bootstrap(self.settings.kafka_bootstrap)
                self._check_free(host, port, "PEAKROUTE_KAFKA_BOOTSTRAP")
                self._check_free("127.0.0.1", self.settings.kafka_controller_port,
                                 "PEAKROUTE_KAFKA_CONTROLLER_PORT", external_hint=False)
            if start_redis:
                host, port = parse_redis_url(self.settings.redis_url)
                redis_bin = ensure_redis_server(self.log)
                self._check_free(host, port, "PEAKROUTE_REDIS_URL")

            kafka_proc = None
            if start_kafka:
                assert java is not None and libs is not None
                kafka_proc = self._start_kafka(java, libs)
            if start_redis:
                assert redis_bin is not None
                self._start_redis(redis_bin)
            elif self.manages_redis:
                self._await_redis(redis_pid, started=False)
            else:
                self._check_external_redis()

            if kafka_proc is not None:
                self._await_kafka(kafka_proc, started=True)
            elif self.manages_kafka:
                self._await_kafka(kafka_pid, started=False)
            else:
                self._check_external_kafka()
        self.ensure_topics(topics)

    def down(self) -> None:
        """Stop the servers this stack started (by pid file only) and remove their pid files."""
        if not self.state.exists():
            return  # never started here; don't create an empty state dir
        with _file_lock(self.state / "stack.lock"):
            targets: list[tuple[str, int, Path]] = []
            for name, managed, pid_file, needles in (
                ("Kafka", self.manages_kafka, self.kafka_pid_file, self._kafka_needles()),
                ("redis-server", self.manages_redis, self.redis_pid_file, self._redis_needles()),
            ):
                if not managed:
                    continue
                pid = read_pid(pid_file)
                if pid is None or not pid_alive(pid):
                    pid_file.unlink(missing_ok=True)
                    continue
                if not pid_matches(pid, needles):
                    self.log(f"not stopping pid {pid} from {pid_file}: it is not the {name} we started")
                    pid_file.unlink(missing_ok=True)
                    continue
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)  # signal both first so they shut down in parallel
                targets.append((name, pid, pid_file))
            for name, pid, pid_file in targets:
                started = time.monotonic()
                killed = stop_pid(pid, self.STOP_TIMEOUT)
                pid_file.unlink(missing_ok=True)
                how = "killed after SIGTERM timed out" if killed else f"{time.monotonic() - started:.1f} s"
                self.log(f"stopped {name} (pid {pid}, {how})")

    def status(self) -> dict:
        """State of each server: running / stopped (ours) or external (someone else's)."""
        k_host, k_port = parse_bootstrap(self.settings.kafka_bootstrap)
        kafka: dict[str, object] = {"bootstrap": self.settings.kafka_bootstrap, "log": str(self.kafka_log)}
        if self.manages_kafka:
            pid = self._running_pid(self.kafka_pid_file, self._kafka_needles())
            kafka.update(state="running" if pid else "stopped", pid=pid,
                         answering=bool(pid) and port_answers(k_host, k_port))
        else:
            kafka.update(state="external", pid=None, answering=port_answers(k_host, k_port))

        redis_: dict[str, object] = {"url": self.settings.redis_url, "log": str(self.redis_log)}
        if self.manages_redis:
            pid = self._running_pid(self.redis_pid_file, self._redis_needles())
            redis_.update(state="running" if pid else "stopped", pid=pid,
                          answering=bool(pid) and _redis_ping(self.settings.redis_url))
        else:
            redis_.update(state="external", pid=None, answering=_redis_ping(self.settings.redis_url))
        return {"kafka": kafka, "redis": redis_}

    def logs(self, lines: int = 50) -> str:
        """The last ``lines`` lines of kafka.log and redis.log, each under a header."""
        parts = []
        for path in (self.kafka_log, self.redis_log):
            body = tail(path, lines) if path.exists() else "(no log yet)"
            parts.append(f"==> {path} <==\n{body}")
        return "\n\n".join(parts)

    def ensure_topics(self, topics: Sequence[TopicSpec]) -> None:
        """Create missing topics (local or external broker) and wait until they have leaders."""
        created = ensure_topics_on(self.settings.kafka_bootstrap, topics, self.TOPIC_TIMEOUT)
        if created:
            self.log(f"created topics: {', '.join(sorted(created))}")

    def reset(self) -> None:
        """down, then delete the stack's data, logs and pid files (not the jar cache)."""
        self.down()
        for d in (self.kafka_dir, self.redis_dir, self.logs_dir, self.pids_dir):
            shutil.rmtree(d, ignore_errors=True)
        (self.state / "stack.lock").unlink(missing_ok=True)
        self.log(f"deleted stack data under {self.state}")

    # -- internals

    def _check_free(self, host: str, port: int, variable: str, external_hint: bool = True) -> None:
        if not port_in_use(host, port):
            return
        if external_hint:
            raise StackError(f"port {port} is already in use by another process; "
                             f"set {variable} to use that server or free the port")
        raise StackError(f"port {port} is already in use by another process; set {variable} to another port "
                         "or free it")

    @staticmethod
    def _last_run_tail(path: Path, lines: int = 20) -> str:
        """Tail of ``path`` limited to the latest run (lines after the last start banner)."""
        text = tail(path, lines)
        return text.rpartition(RUN_BANNER)[2].split("\n", 1)[-1] if RUN_BANNER in text else text

    @staticmethod
    def _open_log(path: Path):  # noqa: ANN205
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size > LOG_ROTATE_BYTES:
                path.replace(path.with_name(path.name + ".1"))
        f = open(path, "ab")
        f.write(f"\n{RUN_BANNER} {time.strftime('%Y-%m-%d %H:%M:%S')} -----\n".encode())
        f.flush()
        return f

    def _spawn(self, cmd: list[str], log_path: Path, pid_file: Path, cwd: Path) -> subprocess.Popen[bytes]:
        """Start ``cmd`` detached (own session, survives the CLI) with output to ``log_path``."""
        with self._open_log(log_path) as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=cwd, start_new_session=True, close_fds=True)
        _CHILDREN[proc.pid] = proc
        write_pid(pid_file, proc.pid)
        return proc

    def _cluster_id(self) -> str:
        """The cluster id kept in cluster.id (recovered from meta.properties if only that survives)."""
        with contextlib.suppress(FileNotFoundError):
            cid = self.cluster_id_file.read_text().strip()
            if cid:
                return cid
        cid = ""
        with contextlib.suppress(FileNotFoundError):
            for line in (self.kafka_data / "meta.properties").read_text().splitlines():
                if line.startswith("cluster.id="):
                    cid = line.split("=", 1)[1].strip()
        cid = cid or new_cluster_id()
        self.cluster_id_file.parent.mkdir(parents=True, exist_ok=True)
        self.cluster_id_file.write_text(cid + "\n")
        return cid

    def _java_cmd(self, java: str, libs: Path, *args: str) -> list[str]:
        return [java, f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}", "-cp", f"{libs}/*", *args]

    def _start_kafka(self, java: str, libs: Path) -> subprocess.Popen[bytes]:
        self.kafka_data.mkdir(parents=True, exist_ok=True)
        self.kafka_props.write_text(render_server_properties(self.settings, self.kafka_data))
        if not (self.kafka_data / "meta.properties").exists():
            cid = self._cluster_id()
            cmd = self._java_cmd(java, libs, "kafka.tools.StorageTool", "format", "--ignore-formatted",
                                 "-t", cid, "-c", str(self.kafka_props))
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.kafka_dir)
            except subprocess.TimeoutExpired:
                raise StackError("formatting Kafka storage timed out") from None
            if res.returncode != 0:
                out = (res.stdout + res.stderr).strip().splitlines()
                raise StackError(f"formatting Kafka storage in {self.kafka_data} failed: "
                                 f"{out[-1] if out else 'exit ' + str(res.returncode)}")
        host, port = parse_bootstrap(self.settings.kafka_bootstrap)
        self.log(f"starting Kafka {self.settings.kafka_version} on {host}:{port}…")
        cmd = [java, "-Xmx1g", "-Xms256m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
               "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true", *self.settings.kafka_jvm_opts.split(),
               *self._java_cmd(java, libs, "kafka.Kafka", str(self.kafka_props))[1:]]
        return self._spawn(cmd, self.kafka_log, self.kafka_pid_file, self.kafka_dir)

    def _await_kafka(self, proc: subprocess.Popen[bytes] | int | None, started: bool) -> None:
        """Wait for our broker to answer; on failure stop it (if we just started it) and show its log."""
        pid = proc.pid if isinstance(proc, subprocess.Popen) else proc
        assert pid is not None
        host, port = parse_bootstrap(self.settings.kafka_bootstrap)
        t0 = time.monotonic()
        try:
            wait_for_kafka(self.settings.kafka_bootstrap, self.KAFKA_START_TIMEOUT, alive=lambda: pid_alive(pid))
        except StackError:
            if not started:
                raise StackError(f"Kafka (pid {pid}) is running but does not answer on {host}:{port}; "
                                 f"see {self.kafka_log} or run `peakroute stack down`") from None
            stop_pid(pid, 10.0)  # don't leave a half-started broker holding the ports
            self.kafka_pid_file.unlink(missing_ok=True)
            raise StackError(f"Kafka broker failed to start; last lines of {self.kafka_log}:\n"
                             f"{self._last_run_tail(self.kafka_log)}") from None
        if started:
            self.log(f"Kafka up on {host}:{port} (pid {pid}, {time.monotonic() - t0:.1f} s)")
        else:
            self.log(f"Kafka already running on {host}:{port} (pid {pid})")

    def _start_redis(self, redis_bin: str) -> None:
        host, port = parse_redis_url(self.settings.redis_url)
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        try:
            bind = socket.gethostbyname(host)
        except OSError:
            bind = "127.0.0.1"
        cmd = [redis_bin, "--port", str(port), "--bind", bind, "--dir", str(self.redis_dir),
               "--daemonize", "no", "--save", "", "--appendonly", "yes",
               "--pidfile", str(self.redis_pid_file), "--logfile", ""]
        proc = self._spawn(cmd, self.redis_log, self.redis_pid_file, self.redis_dir)
        self._await_redis(proc.pid, started=True)

    def _await_redis(self, pid: int | None, started: bool) -> None:
        assert pid is not None
        deadline = time.monotonic() + self.REDIS_START_TIMEOUT
        t0 = time.monotonic()
        while not _redis_ping(self.settings.redis_url):
            if not pid_alive(pid) or time.monotonic() >= deadline:
                if not started:
                    raise StackError(f"redis-server (pid {pid}) is running but does not answer PING on "
                                     f"{self.settings.redis_url}; see {self.redis_log} or run `peakroute stack down`")
                stop_pid(pid, 5.0)
                self.redis_pid_file.unlink(missing_ok=True)
                raise StackError(f"redis-server failed to start; last lines of {self.redis_log}:\n"
                                 f"{self._last_run_tail(self.redis_log)}")
            time.sleep(0.1)
        if started:
            self.log(f"redis up on {self.settings.redis_url} (pid {pid}, {time.monotonic() - t0:.1f} s)")
        else:
            self.log(f"redis already running on {self.settings.redis_url} (pid {pid})")

    def _check_external_kafka(self) -> None:
        try:
            wait_for_kafka(self.settings.kafka_bootstrap, self.EXTERNAL_TIMEOUT)
        except StackError:
            raise StackError(f"Kafka at {self.settings.kafka_bootstrap} (PEAKROUTE_KAFKA_BOOTSTRAP) does not answer "
                             f"within {self.EXTERNAL_TIMEOUT:.0f} s; start it or unset the variable to use "
                             "the local stack") from None
        self.log(f"using external Kafka at {self.settings.kafka_bootstrap}")

    def _check_external_redis(self) -> None:
        deadline = time.monotonic() + self.EXTERNAL_TIMEOUT
        while not _redis_ping(self.settings.redis_url):
            if time.monotonic() >= deadline:
                raise StackError(f"redis at {self.settings.redis_url} (PEAKROUTE_REDIS_URL) does not answer PING; "
                                 "start it or unset the variable to use the local stack")
            time.sleep(0.2)
        self.log(f"using external redis at {self.settings.redis_url}")
