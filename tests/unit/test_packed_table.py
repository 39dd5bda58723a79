"""The per-order tables keep their values as JSON bytes (tables/packed.py)."""

from __future__ import annotations

import pytest

from peakroute.streams.codecs import OrjsonCodec
from peakroute.tables.packed import PackedTable

STATE = {"order_id": "tmall:1", "status": "routed", "holds": {"L1": ["WH-EAST", 1]},
         "order": {"receiver": {"province": "浙江省"}, "lines": [{"sku": "SKU-1", "qty": 2}]}}


def test_values_are_stored_as_json_bytes_and_read_back_equal() -> None:
    store: dict = {}
    table = PackedTable(store)
    table["tmall:1"] = STATE
    assert isinstance(store["tmall:1"], bytes)
    assert "浙江省".encode() in store["tmall:1"]  # UTF-8 as is, like the orjson codec
    assert table.get("tmall:1") == STATE and table["tmall:1"] == STATE
    assert "tmall:1" in table and len(table) == 1 and list(table) == ["tmall:1"]
    assert dict(table.items()) == {"tmall:1": STATE} and list(table.values()) == [STATE]
    assert table.get("jd:2") is None and table.get("jd:2", "x") == "x"
    with pytest.raises(KeyError):
        table["jd:2"]
    del table["tmall:1"]
    assert "tmall:1" not in table


def test_changelog_bytes_written_before_packing_read_the_same() -> None:
    """Before, faust serialized the table's values with its json codec: those changelog records
    are JSON bytes like the ones a packed table keeps, so recovery from an older changelog works."""
    from faust.serializers import codecs

    for old_record in (codecs.dumps("json", STATE), OrjsonCodec().dumps(STATE)):
        assert PackedTable({"tmall:1": old_record})["tmall:1"] == STATE


def test_the_faust_table_keeps_and_recovers_raw_bytes() -> None:
    """faust derives serializers from the value type: value_type=bytes makes the changelog raw."""
    import faust

    app = faust.App("t-packed", broker="kafka://127.0.0.1:1", store="memory://")
    table = app.Table("order-state", default=None, partitions=6, value_type=bytes)
    assert table.value_serializer == "raw" and table.changelog_topic.value_serializer == "raw"


def test_a_returned_value_is_a_snapshot() -> None:
    table = PackedTable({})
    table["k"] = {"status": "waiting"}
    got = table.get("k")
    got["status"] = "routed"
    assert table.get("k") == {"status": "waiting"}  # only a write changes the table (and its changelog)
