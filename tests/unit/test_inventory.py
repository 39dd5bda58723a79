"""Inventory messages from the WMS → stock operations (pure), bad ones → specific rejections."""

import orjson
import pytest

from peakroute.domain.canonical import Rejection
from peakroute.domain.catalog import load_catalog
from peakroute.domain.inventory import parse_inventory

CAT, WHS = load_catalog(), {"WH-EAST"}


def parse(doc) -> dict:
    return parse_inventory(orjson.dumps(doc), CAT, WHS)


def test_each_message_type() -> None:
    base = {"sku": "SKU-TEA-250G", "warehouse": "WH-EAST"}
    assert parse({**base, "type": "snapshot", "on_hand": 5, "safety_stock": 1}) == {
        "op": "stock", **base, "on_hand": 5, "safety": 1}
    assert parse({**base, "type": "receipt", "delta": 3})["delta"] == 3
    assert parse({**base, "type": "adjustment", "delta": -3})["delta"] == -3
    assert parse({**base, "type": "short_pick", "missing": 2})["delta"] == -2
    assert parse({**base, "type": "shipment_confirmed", "order_id": "jd:1", "line_id": "1"})["op"] == "ship"


@pytest.mark.parametrize("doc,code,field", [
    ({"type": "snapshot", "sku": "NOPE", "warehouse": "WH-EAST", "on_hand": 1}, "unknown_sku", "sku"),
    ({"type": "snapshot", "sku": "SKU-TEA-250G", "warehouse": "WH-MARS", "on_hand": 1}, "unknown_warehouse", "warehouse"),
    ({"type": "snapshot", "sku": "SKU-TEA-250G", "warehouse": "WH-EAST", "on_hand": -1}, "bad_quantity", "on_hand"),
    ({"type": "snapshot", "sku": "SKU-TEA-250G", "warehouse": "WH-EAST", "on_hand": "5"}, "bad_quantity", "on_hand"),
    ({"type": "receipt", "sku": "SKU-TEA-250G", "warehouse": "WH-EAST", "delta": -1}, "bad_quantity", "delta"),
    ({"type": "teleport", "sku": "SKU-TEA-250G", "warehouse": "WH-EAST"}, "bad_type", "type"),
    ({"type": "snapshot", "warehouse": "WH-EAST", "on_hand": 1}, "missing_field", "sku"),
])
def test_bad_messages_say_what_and_where(doc, code, field) -> None:
    with pytest.raises(Rejection) as err:
        parse(doc)
    assert (err.value.code, err.value.field) == (code, field)


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"\xff\xfe", b"null"])
def test_malformed_bytes(raw: bytes) -> None:
    with pytest.raises(Rejection) as err:
        parse_inventory(raw, CAT, WHS)
    assert err.value.code in ("malformed_json", "missing_field")
