"""Inventory stage: WMS messages (``peakroute.inventory``) → stock operations for the SKU's owner.

The WMS may key and partition however its client does; this agent re-sends each change to the
partition that owns the SKU, so stock is only ever changed by its owner.  Bad messages are
dead-lettered with the reason, like bad orders.
"""

from __future__ import annotations

from typing import Any

import faust

from ..domain.canonical import Rejection
from ..domain.catalog import Catalog
from ..domain.inventory import parse_inventory
from ..streams.codecs import dumps
from .common import GUARDS, dead_letter_exception, owned_events, send_dead_letter, sku_partition


def register(app: faust.App, *, inventory: faust.TopicT, stock_ops: faust.TopicT, dlq: faust.TopicT,
             catalog: Catalog, warehouses: set[str], partitions: int) -> Any:
    @app.agent(inventory, name="inventory")
    async def inventory_agent(stream: faust.StreamT) -> None:
        async for event in stream.events():
            # A stale or a zombie's forward would be applied out of order with the owner's, and
            # the owner's per-partition watermark (Ledger.inventory_applied) would then skip one.
            if not owned_events(app, [event], "inventory"):
                continue
            try:
                GUARDS.freeze.check("inventory")
                if not event.message.value:
                    raise Rejection("malformed_json", "$", "empty inventory message")
                op = parse_inventory(event.message.value, catalog, warehouses)
                # Where it came from: the owner applies one WMS message once, however often it is
                # forwarded (a worker that dies before committing forwards it again).
                op["src"] = [event.message.partition, event.message.offset]
                await stock_ops.send(key=None, value=dumps({"ops": [op]}),
                                     partition=sku_partition(op["sku"], partitions))
            except Rejection as rej:
                await send_dead_letter(dlq, event, channel=None, stage="inventory", reason=rej.code,
                                       field=rej.field, detail=rej.detail)
            except Exception as exc:  # noqa: BLE001 - nothing may escape a faust agent
                await dead_letter_exception(dlq, event, exc, channel=None, stage="inventory")

    return inventory_agent
