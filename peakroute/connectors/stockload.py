"""Seeding and loading stock: ``peakroute stock load FILE`` and ``peakroute stock generate``.

Both speak the public ``peakroute.inventory`` message format (see ``domain/inventory.py``), so a
seeded stock goes through exactly the path a WMS snapshot does.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

import orjson
from confluent_kafka import Producer

from ..domain.catalog import Catalog
from ..domain.network import Network
from ..streams.topics import INVENTORY


def generate_stock(catalog: Catalog, network: Network, *, seed: int = 11, units: int = 2000,
                   scarce: dict[str, int] | None = None, safety_ratio: float = 0.02) -> list[dict]:
    """A consistent initial stock: every catalog SKU in most warehouses, bigger warehouses hold more.

    ``scarce`` caps a SKU's total units over the network (a hot SKU that will sell out).
    """
    rng = random.Random(seed)
    scarce = scarce or {}
    out = []
    weights = {w.code: w.daily_capacity for w in network.warehouses}
    total_w = sum(weights.values())
    for sku in sorted(catalog.items):
        carried = [w for w in network.warehouses if rng.random() < 0.85] or list(network.warehouses)
        budget = scarce.get(sku)
        for w in carried:
            share = weights[w.code] / total_w
            if budget is not None:
                on_hand = max(0, int(budget * weights[w.code] / sum(weights[c.code] for c in carried)))
                safety = 0
            else:
                on_hand = int(units * share * len(network.warehouses) * rng.uniform(0.6, 1.4))
                safety = int(on_hand * safety_ratio)
            out.append({"type": "snapshot", "sku": sku, "warehouse": w.code, "on_hand": on_hand,
                        "safety_stock": safety})
    return out


def load_messages(path: str | Path) -> list[dict]:
    """A JSON array or JSON-lines file of inventory messages."""
    data = Path(path).read_bytes().strip()
    if data.startswith(b"["):
        return list(orjson.loads(data))
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def produce_inventory(producer: Producer, messages: Iterable[dict]) -> int:
    n = 0
    for msg in messages:
        while True:
            try:
                producer.produce(INVENTORY, key=str(msg.get("sku", "")).encode(), value=orjson.dumps(msg))
                break
            except BufferError:
                producer.poll(0.1)
        n += 1
    remaining = producer.flush(60)
    if remaining:
        raise RuntimeError(f"{remaining} inventory messages not delivered")
    return n
