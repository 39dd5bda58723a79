"""Inventory messages from the WMS side (``peakroute.inventory``, key = SKU) → stock operations.

Message types (UTF-8 JSON objects; a public contract, see README):
- ``snapshot``  — absolute: ``{"type": "snapshot", "sku", "warehouse", "on_hand", "safety_stock"?}``
- ``adjustment`` / ``receipt`` — relative: ``{"type": ..., "sku", "warehouse", "delta", "reason"?}``
- ``shipment_confirmed`` — ``{"type": ..., "order_id", "line_id", "sku", "warehouse"}``: the reserved
  units left the building (reserved becomes shipped, on-hand drops).
- ``short_pick`` — ``{"type": ..., "sku", "warehouse", "missing", "order_id"?}``: pickers found fewer
  units than the books say; on-hand drops by ``missing`` (and reservations beyond it are oversold).
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from .canonical import Rejection
from .catalog import Catalog

MAX_UNITS = 100_000_000


def sku_partition(sku: str, partitions: int) -> int:
    """The partition that owns a SKU's stock (stable across processes and restarts)."""
    return zlib.crc32(sku.encode()) % partitions


def _int(doc: dict, name: str, *, minimum: int | None = None) -> int:
    v = doc.get(name)
    if v is None:
        raise Rejection("missing_field", name, f"{name} is required")
    if isinstance(v, bool) or not isinstance(v, int) or abs(v) > MAX_UNITS:
        raise Rejection("bad_quantity", name, f"{name} must be an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise Rejection("bad_quantity", name, f"{name} must be >= {minimum}, got {v}")
    return v


def _str(doc: dict, name: str) -> str:
    v = doc.get(name)
    if not isinstance(v, str) or not v.strip():
        raise Rejection("missing_field", name, f"{name} must be a non-empty string")
    return v.strip()


def parse_inventory(raw: bytes, catalog: Catalog, warehouses: set[str]) -> dict[str, Any]:
    """One inventory message as a stock operation for the SKU's owner; raises Rejection."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Rejection("malformed_json", "$", f"not UTF-8 JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Rejection("malformed_json", "$", "inventory message must be a JSON object")
    kind = doc.get("type")
    sku = _str(doc, "sku")
    if sku not in catalog:
        raise Rejection("unknown_sku", "sku", f"SKU {sku!r} is not in the catalog")
    wh = _str(doc, "warehouse")
    if wh not in warehouses:
        raise Rejection("unknown_warehouse", "warehouse", f"warehouse {wh!r} is not in the network")
    if kind == "snapshot":
        op: dict[str, Any] = {"op": "stock", "sku": sku, "warehouse": wh, "on_hand": _int(doc, "on_hand", minimum=0)}
        if doc.get("safety_stock") is not None:
            op["safety"] = _int(doc, "safety_stock", minimum=0)
        return op
    if kind in ("adjustment", "receipt"):
        delta = _int(doc, "delta")
        if kind == "receipt" and delta < 0:
            raise Rejection("bad_quantity", "delta", "a receipt cannot be negative")
        return {"op": "stock", "sku": sku, "warehouse": wh, "delta": delta}
    if kind == "shipment_confirmed":
        return {"op": "ship", "sku": sku, "warehouse": wh, "order_id": _str(doc, "order_id"),
                "line_id": _str(doc, "line_id")}
    if kind == "short_pick":
        return {"op": "stock", "sku": sku, "warehouse": wh, "delta": -_int(doc, "missing", minimum=1),
                "short_pick": True}
    raise Rejection("bad_type", "type", f"unknown inventory message type {kind!r}")
