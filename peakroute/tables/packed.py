"""A faust table whose values live in memory as orjson bytes, decoded on each read.

Why: faust's ``memory://`` store keeps every value as the Python object it was given.  An order's
routing state (the canonical order, its plan, holds and replies) is a tree of small dicts, lists
and strings: about 6.5 KB of worker RSS per order in the 10-minute soak, against 2.2 KB as JSON.
Kept as bytes it costs the JSON plus one object header; decoding it again (orjson, a few µs for
2 KB) happens only when the order is touched.  The changelog records are the same bytes, so the
table reads changelogs written before this change unchanged (faust wrote them as JSON too).

The faust table must be created with ``value_type=bytes``: faust derives a table's serializers from
its key and value types (``raw`` for bytes, else ``json``), not from a schema.

A packed value is a snapshot: changing a dict returned by :meth:`get` does not change the table
until it is written back — which is also the only way the change reaches the changelog.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from ..streams.codecs import dumps
from .store import table_get

_MISSING = object()


class PackedTable:
    """The mapping interface the agents use (``get``, ``[]``, ``in``, ``items``, ``del``) over a
    faust table created with ``value_serializer="raw"``; anything else goes to the faust table."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, key: Any, default: Any = None, partition: int | None = None, exact: bool = False) -> Any:
        """``partition``: where the key should live, a hint for the RocksDB store (``exact``: where
        it is if anywhere; tables/store.py)."""
        raw = table_get(self.table, key, None, partition, exact)
        return default if raw is None else orjson.loads(raw)

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    @staticmethod
    def pack(value: Any) -> bytes:
        # An exact-size copy: orjson returns its output in an over-allocated buffer shrunk in place,
        # and kept by the thousand those buffers fragment the heap — measured 4.1 KB of RSS per 1 KB
        # value, against 1.1 KB for the copy (and 5.9 KB for the dict it replaces).
        return bytes(memoryview(dumps(value)))

    def __setitem__(self, key: Any, value: Any) -> None:
        self.table[key] = self.pack(value)

    def __delitem__(self, key: Any) -> None:
        del self.table[key]

    def __contains__(self, key: Any) -> bool:
        return key in self.table

    def __len__(self) -> int:
        return len(self.table)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.table)

    def items(self) -> Iterator[tuple[Any, Any]]:
        for key, raw in list(self.table.items()):
            if raw is not None:
                yield key, orjson.loads(raw)

    def values(self) -> Iterator[Any]:
        for _, value in self.items():
            yield value

    def __getattr__(self, name: str) -> Any:
        return getattr(self.table, name)
