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


def changelog_specs(settings: Settings) -> list[TopicSpec]:  # noqa: F821
    """The tables' changelog topics, compacted, co-partitioned with the stream topics.

    Created before a worker starts: a worker that found them missing would refuse every table
    write of its first batches (faust PartitionsMismatch) until it created them itself.
    """
    from ..stack import TopicSpec

    return [TopicSpec(changelog_topic(settings.app_id, t), settings.partitions, compacted=True) for t in TABLES]
