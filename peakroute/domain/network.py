"""The warehouse network and the order-priority rules, loaded from a readable TOML file.

Kept apart from the routing decision so that ops can change the network before a peak without
touching code, and so that routing stays a pure function of (order, network, stock).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

BEIJING = timezone(timedelta(hours=8))

#: Provincial capitals (lat, lon): distance from a buyer's province to a warehouse.
PROVINCE_COORDS: dict[str, tuple[float, float]] = {
    "11": (39.90, 116.40), "12": (39.13, 117.20), "13": (38.04, 114.51), "14": (37.87, 112.55),
    "15": (40.84, 111.75), "21": (41.80, 123.43), "22": (43.82, 125.32), "23": (45.80, 126.53),
    "31": (31.23, 121.47), "32": (32.06, 118.80), "33": (30.27, 120.15), "34": (31.82, 117.23),
    "35": (26.07, 119.30), "36": (28.68, 115.86), "37": (36.65, 117.12), "41": (34.75, 113.62),
    "42": (30.59, 114.31), "43": (28.23, 112.94), "44": (23.13, 113.26), "45": (22.82, 108.37),
    "46": (20.04, 110.20), "50": (29.56, 106.55), "51": (30.57, 104.07), "52": (26.65, 106.63),
    "53": (25.04, 102.71), "54": (29.65, 91.14), "61": (34.34, 108.94), "62": (36.06, 103.83),
    "63": (36.62, 101.78), "64": (38.49, 106.23), "65": (43.83, 87.62), "71": (25.03, 121.57),
    "81": (22.32, 114.17), "82": (22.20, 113.55),
}


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance: good enough to rank warehouses by nearness."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 6371.0 * 2 * math.asin(math.sqrt(h))


@lru_cache(maxsize=4096)
def _distance_to_province(lat: float, lon: float, province_code: str) -> float:
    """Remembered: the planner asks it ~6 times per order, always for one of a few hundred
    (warehouse, province) pairs (with the planner's other cut: plan ×0.90, benchmarks/RESULTS.md)."""
    return distance_km((lat, lon), PROVINCE_COORDS[province_code])


@dataclass(frozen=True)
class Warehouse:
    code: str
    name: str
    lat: float
    lon: float
    serves: frozenset[str]  #: province codes, or {"*"}
    daily_capacity: int
    cutoff: str  #: "HH:MM" Beijing time
    channels: frozenset[str]

    def serves_province(self, code: str) -> bool:
        return "*" in self.serves or code in self.serves

    def distance_to(self, province_code: str) -> float:
        if province_code not in PROVINCE_COORDS:
            return 10_000.0
        return _distance_to_province(self.lat, self.lon, province_code)

    def ship_by(self, paid_at: datetime) -> datetime:
        """Paid before today's cut-off: ship today; otherwise tomorrow (end of day, Beijing time)."""
        local = paid_at.astimezone(BEIJING)
        hh, mm = (int(x) for x in self.cutoff.split(":"))
        day = local.date() if (local.hour, local.minute) < (hh, mm) else local.date() + timedelta(days=1)
        end = datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=BEIJING)
        return end.astimezone(UTC)


@dataclass(frozen=True)
class PriorityRule:
    priority: int
    urgent: bool | None = None
    tier: str | None = None
    categories: frozenset[str] | None = None

    def matches(self, *, urgent: bool, tier: str, categories: set[str]) -> bool:
        return ((self.urgent is None or self.urgent == urgent)
                and (self.tier is None or self.tier == tier)
                and (self.categories is None or bool(self.categories & categories)))


@dataclass(frozen=True)
class Network:
    warehouses: tuple[Warehouse, ...]
    max_shipments: int = 2
    max_attempts: int = 3
    vip_payment_fen: int = 200_000
    default_priority: int = 4
    priority_rules: tuple[PriorityRule, ...] = field(default_factory=tuple)

    def by_code(self) -> dict[str, Warehouse]:
        return {w.code: w for w in self.warehouses}

    def priority(self, *, urgent: bool, payment_fen: int, categories: set[str]) -> int:
        """Customer tier × product category × urgency → priority (1 = first)."""
        tier = "vip" if payment_fen >= self.vip_payment_fen else "regular"
        for rule in self.priority_rules:
            if rule.matches(urgent=urgent, tier=tier, categories=categories):
                return rule.priority
        return self.default_priority

    @classmethod
    def from_toml(cls, text: str) -> Network:
        doc: dict[str, Any] = tomllib.loads(text)
        whs = tuple(
            Warehouse(code=w["code"], name=w.get("name", w["code"]), lat=float(w["lat"]), lon=float(w["lon"]),
                      serves=frozenset(w["serves"]), daily_capacity=int(w["daily_capacity"]),
                      cutoff=w.get("cutoff", "16:00"), channels=frozenset(w["channels"]))
            for w in doc["warehouse"])
        if len({w.code for w in whs}) != len(whs):
            raise ValueError("warehouse codes must be unique")
        routing = doc.get("routing", {})
        prio = doc.get("priority", {})
        rules = tuple(
            PriorityRule(priority=int(r["priority"]), urgent=r.get("urgent"), tier=r.get("tier"),
                         categories=frozenset(r["category"]) if "category" in r else None)
            for r in prio.get("rule", []))
        return cls(warehouses=whs, max_shipments=int(routing.get("max_shipments", 2)),
                   max_attempts=int(routing.get("max_attempts", 3)),
                   vip_payment_fen=int(prio.get("vip_payment_fen", 200_000)),
                   default_priority=int(prio.get("default", 4)), priority_rules=rules)


def load_network(path: str | Path | None = None) -> Network:
    """The network from ``path``, or the default one shipped in ``peakroute/data/network.toml``."""
    if path:
        return Network.from_toml(Path(path).read_text(encoding="utf-8"))
    return Network.from_toml(resources.files("peakroute.data").joinpath("network.toml").read_text(encoding="utf-8"))
