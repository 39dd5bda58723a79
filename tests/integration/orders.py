"""Raw channel payloads with chosen lines, built with the simulator's channel renderers."""

from __future__ import annotations

import itertools
import json
import random
import time
from pathlib import Path

from peakroute.connectors.payloads import SimAddress, SimBuyer, SimLine, SimOrder, build_payload
from peakroute.domain.provinces import BY_CODE

_ids = itertools.count(int(time.time() * 1000) % 10**9 * 1000)
ADDR = {
    "33": SimAddress(BY_CODE["33"], "杭州市", "3301", "西湖区", "330106", "西湖街道", "文三路", "310000"),
    "44": SimAddress(BY_CODE["44"], "深圳市", "4403", "南山区", "440305", "粤海街道", "深南大道", "518000"),
    "11": SimAddress(BY_CODE["11"], "北京市", "1101", "朝阳区", "110105", "望京街道", "阜通东大街", "100102"),
}
BUYER = SimBuyer("张*", "138****0000", "t**1", 7)
T0 = 1_794_326_400  # 2026-11-11 00:00 Beijing


def channel_order_id(channel: str) -> str:
    n = next(_ids)
    return {"tmall": str(3_800_000_000_000_000_000 + n), "jd": str(200_000_000_000 + n % 10**11),
            "douyin": str(6_900_000_000_000_000_000 + n), "wxmini": str(3_700_000_000_000_000_000 + n)}[channel]


def sim_order(lines: list[tuple[str, int]], *, channel: str = "tmall", status: str = "paid",
              province: str = "33", updated_offset: int = 0, oid: str | None = None) -> SimOrder:
    oid = oid or channel_order_id(channel)
    sim_lines = tuple(SimLine(sku, sku, q, 1000, 1000 * q) for sku, q in lines)
    paid = T0 + 5 if status != "pending_payment" else None
    return SimOrder(channel, oid, status, T0, paid, T0 + 5 + updated_offset, sim_lines, ADDR[province], BUYER)


def payload(order: SimOrder) -> bytes:
    return build_payload(order)


def write_catalog(path: Path, skus: list[str]) -> Path:
    path.write_text(json.dumps({"version": 1, "skus": [
        {"sku": s, "name": s, "category": "general", "list_price_fen": 1000} for s in skus]}))
    return path


def shuffled(items: list, seed: int = 7) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items
