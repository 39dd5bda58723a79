"""The SKU catalog: merchant SKU codes the router knows.

An order line whose SKU is not in the catalog cannot be reserved or routed, so normalization rejects
it (``unknown_sku``) instead of letting it fail later, deep inside reservation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class CatalogItem:
    sku: str
    name: str
    category: str
    list_price_fen: int
    gift: bool = False


@dataclass(frozen=True)
class Catalog:
    items: dict[str, CatalogItem]

    def __contains__(self, sku: object) -> bool:
        return sku in self.items

    def get(self, sku: str) -> CatalogItem | None:
        return self.items.get(sku)

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def from_json(cls, data: bytes | str) -> Catalog:
        doc = json.loads(data)
        items = {
            row["sku"]: CatalogItem(
                sku=row["sku"], name=row.get("name", row["sku"]),
                category=row.get("category", "general"),
                list_price_fen=int(row.get("list_price_fen", 0)), gift=bool(row.get("gift", False)),
            )
            for row in doc["skus"]
        }
        return cls(items)


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load the catalog from ``path``, or the default one shipped in ``peakroute/data``."""
    if path:
        return Catalog.from_json(Path(path).read_bytes())
    return Catalog.from_json(resources.files("peakroute.data").joinpath("catalog.json").read_bytes())
