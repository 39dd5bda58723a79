"""One settings object, read from ``PEAKROUTE_*`` environment variables.

Every process (worker, api, stack, simulator, tests) builds its configuration through
:func:`Settings.from_env` so that one variable changes one thing everywhere.  The full list is in
``README.md`` (section *Configuration*) and in ``peakroute config``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

PREFIX = "PEAKROUTE_"
CHANNELS: tuple[str, ...] = ("tmall", "jd", "douyin", "wxmini")


def _default_state_dir() -> str:
    return str(Path.cwd() / ".peakroute")


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "peakroute")


def mask_url(url: str) -> str:
    """``url`` with any password (``redis://:pw@host``, ``http://user:pw@host``) replaced by ``***``."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is None and "@" not in parts.netloc:
            return url
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}" if user else f":***@{host}"))
    except ValueError:
        return "***"


def _is_secret_field(name: str) -> bool:
    return any(word in name for word in ("token", "secret", "password"))


def _shown(name: str, value: object) -> str:
    """How a setting may be shown (``peakroute config``, ``repr``): secrets never, URLs without passwords."""
    if _is_secret_field(name):
        return "(set)" if value else "(unset)"
    if name.endswith("_url") and isinstance(value, str):
        return mask_url(value)
    return str(value)


@dataclass(frozen=True)
class Settings:
    """Runtime configuration.  Field ``x_y`` is read from ``PEAKROUTE_X_Y``."""

    #: Kafka bootstrap servers.  When set explicitly, ``peakroute stack up`` starts no broker.
    kafka_bootstrap: str = "127.0.0.1:9092"
    #: Redis URL.  When set explicitly, ``peakroute stack up`` starts no redis-server.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Where the local stack keeps data, logs and pid files.
    state_dir: str = field(default_factory=_default_state_dir)
    #: Where downloaded Kafka jars are cached between runs.
    cache_dir: str = field(default_factory=_default_cache_dir)
    #: Apache Kafka release fetched from Maven Central (org.apache.kafka:kafka_2.13).
    kafka_version: str = "4.1.1"
    #: KRaft controller port of the local broker.
    kafka_controller_port: int = 9093
    #: Extra JVM options of the local broker (``peakroute stack up``), space-separated, after the
    #: project's own (heap, G1); e.g. ``-XX:TieredStopAtLevel=1``.
    kafka_jvm_opts: str = ""
    #: Partitions of every project topic (raw, canonical, tables).  Fixed at topic creation.
    partitions: int = 6
    #: Faust application id (consumer group and changelog topic prefix).
    app_id: str = "peakroute"
    #: Port of ``peakroute api`` (webhooks, status and ops endpoints).
    http_port: int = 8080
    #: Largest webhook body accepted, in bytes (larger gets 413).
    max_body_bytes: int = 256 * 1024
    #: Webhook timestamps older or newer than this many seconds are refused (replay protection).
    webhook_tolerance_s: int = 300
    #: SKU catalog file (JSON).  Empty means the catalog shipped with the project.
    catalog_file: str = ""
    #: Warehouse network + priority rules (TOML).  Empty means ``peakroute/data/network.toml``.
    network_file: str = ""
    #: Surge breaker: sliding window (s), trip ratio (4 = +300%), minimum volume (orders/s), default
    #: drain rate (orders/s), and the priority at or under which orders bypass an open breaker.
    breaker_window_s: int = 10
    breaker_trip_ratio: float = 4.0
    breaker_min_rate: float = 5.0
    breaker_drain_rate: float = 20.0
    breaker_bypass_priority: int = 1
    #: Kafka consumer-group session timeout (s): a worker silent this long (crashed, SIGSTOPped,
    #: partitioned away) loses its partitions to the others.  Heartbeats go every third of it (at
    #: most 3 s), and a worker whose own event loop was frozen for most of it exits (code 70)
    #: instead of acting on partitions it may no longer own.
    session_timeout_s: float = 30.0
    #: Worker event loop: ``uvloop`` (libuv; a faster asyncio loop for faust's many small
    #: callbacks — see benchmarks/RESULTS.md) or ``asyncio`` (the standard library's).
    event_loop: str = "uvloop"
    #: Where faust keeps the tables: ``rocksdb`` (local RocksDB files under ``state_dir``, memory
    #: bounded however many orders the day brings) or ``memory`` (the Python heap: grows with
    #: every order).  Either way a worker restores its tables from the changelogs at start
    #: (peakroute/tables/store.py), with rocksdb only those written since a clean stop (``table_keep``).
    table_store: str = "rocksdb"
    #: With ``table_store=rocksdb``: MB of memory for all of a worker's table databases together
    #: (one block cache; memtables are charged to it).
    table_memory_mb: int = 64
    #: With ``table_store=rocksdb``: how a worker fills the tables of partitions it is assigned —
    #: ``bulk`` (their changelogs read by a plain librdkafka consumer straight into RocksDB, then
    #: faust's recovery for anything newer: peakroute/tables/restore.py) or ``faust`` (faust's
    #: recovery alone, record by record through its consumer).
    table_restore: str = "bulk"
    #: How long (s) one table's bulk restore may hold up a rebalance; past it faust's recovery
    #: reads the rest.
    table_restore_max_s: float = 60.0
    #: With ``table_store=rocksdb``: ``clean-stop`` (a worker stopped cleanly — SIGTERM — leaves its
    #: table files and a marker; the next worker started on the same state dir within 30 minutes
    #: keeps them and reads only the changelog records written since: peakroute/tables/clean_stop.py)
    #: or ``never`` (every start restores its tables in full from the changelogs).
    table_keep: str = "clean-stop"
    #: How long (ms) a table changelog's active segment stays open before it is closed and may be
    #: compacted (streams/topics.changelog_config): a bound on how much of the day a restart reads
    #: uncompacted.  Applied to the changelog topics whenever a worker or ``stack up`` ensures them.
    changelog_segment_ms: int = 600_000
    #: How long (ms) the oldest message of an agent's batch (at most 500 messages) may wait for the
    #: batch to fill (with ``batching=arrival``; with ``faust``: how long each batch waits after the
    #: previous one).  Longer: fatter batches at low rates; under load the previous batch's
    #: processing time does the batching.  Measured (benchmarks/RESULTS.md).
    batch_wait_ms: float = 10.0
    #: The same wait for a message of the internal topics (stock-ops, stock-replies), which are
    #: batched already: one message per destination partition per batch upstream, so waiting for
    #: company gathers less (a batch with such a message goes once it has waited this long).
    internal_batch_wait_ms: float = 10.0
    #: How an agent's batches wait: ``arrival`` (the wait counts from the batch's oldest message's
    #: arrival, and messages are buffered while the previous batch is processed:
    #: peakroute/streams/batching.py) or ``faust`` (faust's ``take_events``: the whole wait again
    #: after every batch; for an A/B, or should a newer faust change the stream internals it uses).
    batching: str = "arrival"
    #: How long (ms) the broker may hold a fetch of the worker's consumer to gather 64 KiB; 0 is
    #: faust's default (answer as soon as anything is there: many small fetches under a steady stream).
    fetch_wait_ms: int = 0
    #: ``fast``: the worker's consumer encodes its Fetch requests and decodes the responses with
    #: ``struct`` (peakroute/streams/fetch_codec.py; the same bytes and values as aiokafka's own);
    #: ``aiokafka``: aiokafka's generic field-by-field codec (for an A/B, or should a newer aiokafka
    #: differ — the fast codec then also steps aside by itself).  Installed once per process.
    fetch_codec: str = "fast"
    #: Bearer token required by every state-changing ops call (breakers, review).  Unset: those
    #: calls are refused (fail closed).  From the environment only; never logged.
    operator_token: str = field(default="", repr=False)
    #: Where ``peakroute breaker`` / ``peakroute review`` find the api.
    api_url: str = "http://127.0.0.1:8080"
    #: Log level of PeakRoute's own loggers.
    log_level: str = "INFO"
    #: ``text`` (human-readable) or ``json`` (one JSON object per line, for log shippers).
    log_format: str = "text"
    #: Per-channel webhook secrets: ``PEAKROUTE_WEBHOOK_SECRET_TMALL`` etc.  A channel without a
    #: secret refuses every webhook (fail closed).
    webhook_secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: True when ``kafka_bootstrap`` / ``redis_url`` came from the environment (use, don't start).
    kafka_external: bool = False
    redis_external: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``env`` (default ``os.environ``); ``overrides`` win over both."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            if f.name in ("webhook_secrets", "kafka_external", "redis_external"):
                continue
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            if f.type in ("int", int):
                values[f.name] = int(raw)
            elif f.type in ("float", float):
                values[f.name] = float(raw)
            else:
                values[f.name] = raw
        values["webhook_secrets"] = {
            ch: env[PREFIX + "WEBHOOK_SECRET_" + ch.upper()]
            for ch in CHANNELS
            if env.get(PREFIX + "WEBHOOK_SECRET_" + ch.upper())
        }
        values["kafka_external"] = bool(env.get(PREFIX + "KAFKA_BOOTSTRAP"))
        values["redis_external"] = bool(env.get(PREFIX + "REDIS_URL"))
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def breaker_config(self) -> BreakerConfig:  # noqa: F821
        from .domain.breaker import BreakerConfig

        return BreakerConfig(window_s=self.breaker_window_s, trip_ratio=self.breaker_trip_ratio,
                             min_rate=self.breaker_min_rate, drain_rate=self.breaker_drain_rate,
                             bypass_priority=self.breaker_bypass_priority)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    def __repr__(self) -> str:
        """Like a dataclass repr, but secrets show only whether they are set (logs, tracebacks)."""
        def show(name: str, value: object) -> str:
            if name == "webhook_secrets" and isinstance(value, Mapping):
                return repr({ch: "***" for ch in value})
            return repr(_shown(name, value)) if _is_secret_field(name) or name.endswith("_url") else repr(value)

        return "Settings(" + ", ".join(f"{f.name}={show(f.name, getattr(self, f.name))}" for f in fields(self)) + ")"

    def describe(self) -> list[tuple[str, str, str]]:
        """(variable, value, help) rows for ``peakroute config``; secrets are never shown."""
        rows = []
        for f in fields(self):
            if f.name in ("kafka_external", "redis_external"):
                continue
            if f.name == "operator_token":
                rows.append(("PEAKROUTE_OPERATOR_TOKEN", "(set)" if self.operator_token else "(unset: ops calls refused)",
                             "bearer token of state-changing ops calls"))
                continue
            if f.name == "webhook_secrets":
                for ch in CHANNELS:
                    rows.append((f"{PREFIX}WEBHOOK_SECRET_{ch.upper()}",
                                 "(set)" if ch in self.webhook_secrets else "(unset: webhooks refused)",
                                 f"HMAC secret of the {ch} webhook"))
                continue
            rows.append((PREFIX + f.name.upper(), _shown(f.name, getattr(self, f.name)), ""))
        return rows
