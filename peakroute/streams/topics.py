"""Topic names: a public contract (README, section *Public contract*).

Values are UTF-8 JSON.  Raw topics carry the channel's payload unchanged, keyed by the channel
order id; ``peakroute.orders`` carries canonical orders keyed by ``order_id`` (an output of the
router; it does not read it back); ``peakroute.dlq``
carries every rejected or failed input with the reason and the original bytes.
"""

from __future__ import annotations

from ..config import CHANNELS, Settings

RAW_PREFIX = "peakroute.raw."
ORDERS = "peakroute.orders"
DLQ = "peakroute.dlq"
# Added by later stages (reservation, routing, breaker, audit); names reserved now.
INVENTORY = "peakroute.inventory"
FULFILLMENT_PREFIX = "peakroute.fulfillment."
ORDER_EVENTS = "peakroute.order-events"
REVIEW = "peakroute.review"
AUDIT = "peakroute.audit"
# Internal (not a contract): fat batches between the order owner and the SKU owner.
STOCK_OPS = "peakroute.internal.stock-ops"
STOCK_REPLIES = "peakroute.internal.stock-replies"


def fulfillment_topic(warehouse: str) -> str:
    """``peakroute.fulfillment.<warehouse>``: shipment and cancel requests for one warehouse's WMS."""
    return FULFILLMENT_PREFIX + warehouse


def raw_topic(channel: str) -> str:
    """``peakroute.raw.<channel>``: where a channel's payloads land, unchanged."""
    return RAW_PREFIX + channel


RAW_TOPICS: tuple[str, ...] = tuple(raw_topic(ch) for ch in CHANNELS)


def topic_specs(settings: Settings) -> list[TopicSpec]:  # noqa: F821 - imported lazily
    """Every topic the project creates up front, with its partition count.

    All stream topics share one partition count so that faust can co-partition its tables with
    them (a table partition lives on the worker that owns the same source partition).
    """
    from ..domain.network import load_network
    from ..stack import TopicSpec

    n = settings.partitions
    specs = [TopicSpec(t, n) for t in RAW_TOPICS]
    specs += [TopicSpec(t, n) for t in (ORDERS, DLQ, INVENTORY, ORDER_EVENTS, REVIEW, AUDIT, STOCK_OPS, STOCK_REPLIES)]
    specs += [TopicSpec(fulfillment_topic(w.code), n)
              for w in load_network(settings.network_file or None).warehouses]
    return specs


#: faust tables of the pipeline (see streams/app.py); each has a changelog topic.
#: ``order-routing`` replaced ``order-versions`` + ``order-state`` (partitioned by the canonical
#: order id) when normalize and fulfillment became one agent: its records live on the raw partitions.
TABLES: tuple[str, ...] = ("order-routing", "stock-levels", "stock-holds")


def changelog_topic(app_id: str, table: str) -> str:
    """faust's name for a table's changelog topic."""
    return f"{app_id}-{table}-changelog"


#: How long a changelog tombstone stays readable after compaction reached it (``delete.retention.ms``).
#: Local table files are trusted for at most half of it (tables/clean_stop.py).
DELETE_RETENTION_MS = 3_600_000


def changelog_config(segment_ms: int) -> dict[str, str]:
    """How the changelogs are compacted: so that what a worker reads at every start and takeover
    stays near one record per live key, not every write of the day.

    Why: Kafka never compacts a partition's active segment, and rolls it at 1 GiB or after 7 days
    by default — at a few hundred records/s per partition, never within a peak day.  Measured
    (``benchmarks/drain.py --restart``, benchmarks/RESULTS.md): 3.7 records per order against
    2.5 live keys per order while nothing has shipped, and 1 once orders ship (their holds deleted).

    * ``segment.ms``: the active segment closes after this long (then the cleaner may compact it).
    * ``min.cleanable.dirty.ratio`` 0.2: compact once a fifth of a log is uncompacted (default half).
    * ``delete.retention.ms`` 1 h (default 24 h): how long a tombstone (a released or shipped hold)
      stays to be read.  It must outlast the longest read of a partition from its start — a bulk
      restore is bounded by ``table_restore_max_s`` (60 s), faust's recovery by the stall watch —
      and the time a worker's local table files are caught up from (tables/clean_stop.py: half of it).
    * ``min.compaction.lag.ms`` 5 min: no record younger than this is compacted away.  It gives the
      owner of a partition time to write a key again after a replaced owner's late write of it
      (tables/repair.py) before the cleaner could remove the owner's own earlier record.
    """
    return {"segment.ms": str(segment_ms), "min.cleanable.dirty.ratio": "0.2",
            "delete.retention.ms": str(DELETE_RETENTION_MS), "min.compaction.lag.ms": str(min(300_000, segment_ms))}


def changelog_specs(settings: Settings) -> list[TopicSpec]:  # noqa: F821
    """The tables' changelog topics, compacted, co-partitioned with the stream topics.

    Created before a worker starts: a worker that found them missing would refuse every table
    write of its first batches (faust PartitionsMismatch) until it created them itself.
    """
    from ..stack import TopicSpec

    cfg = changelog_config(settings.changelog_segment_ms)
    return [TopicSpec(changelog_topic(settings.app_id, t), settings.partitions, compacted=True, settings=cfg)
            for t in TABLES]
