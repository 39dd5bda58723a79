"""The shared channel samples, re-keyed with fresh order ids so tests sharing a broker never collide."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import orjson

_SHARED = Path(__file__).resolve().parents[3] / "shared" / "channel-samples"
SAMPLES = _SHARED if _SHARED.is_dir() else Path(__file__).resolve().parents[2] / "peakroute" / "data" / "samples"
_rng = random.SystemRandom()


def load(channel: str) -> dict[str, Any]:
    return orjson.loads((SAMPLES / f"{channel}.json").read_bytes())


def fresh_id(channel: str) -> str:
    digits = {"tmall": 19, "jd": 12, "douyin": 19, "wxmini": 19}[channel]
    return str(_rng.randrange(10 ** (digits - 1), 10 ** digits))


def with_id(channel: str, doc: dict[str, Any], order_id: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    if channel == "tmall":
        t = doc["trade_fullinfo_get_response"]["trade"]
        t["tid_str"], t["tid"] = order_id, int(order_id)
    elif channel == "jd":
        doc["orderId"] = order_id
    elif channel == "douyin":
        d = doc["data"]["shop_order_detail"]
        d["order_id"] = order_id
        for i, line in enumerate(d["sku_order_list"]):
            line["parent_order_id"] = order_id
            line["order_id"] = f"{order_id[:-2]}{i + 10}"
    else:
        doc["order"]["order_id"] = order_id
    return doc


def fresh(channel: str) -> tuple[str, dict[str, Any]]:
    oid = fresh_id(channel)
    return oid, with_id(channel, load(channel), oid)


def cancelled(channel: str, doc: dict[str, Any]) -> dict[str, Any]:
    """The same order as the channel re-sends it after cancellation (one minute later)."""
    doc = copy.deepcopy(doc)
    if channel == "tmall":
        t = doc["trade_fullinfo_get_response"]["trade"]
        t["status"], t["modified"] = "TRADE_CLOSED", "2026-11-11 00:01:05"
    elif channel == "jd":
        doc["orderState"], doc["modified"] = "TRADE_CANCELED", "2026-11-11 00:01:09"
    elif channel == "douyin":
        d = doc["data"]["shop_order_detail"]
        d["order_status"], d["update_time"] = 4, d["update_time"] + 60
    else:
        doc["order"]["status"], doc["order"]["update_time"] = 250, doc["order"]["update_time"] + 60
    return doc


def dumps(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)
