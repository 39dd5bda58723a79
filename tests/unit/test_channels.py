"""Normalization of the four channels' payloads: samples, fixtures, rejections and fuzzing."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peakroute.domain.canonical import REJECTION_CODES, STATUSES, CanonicalOrder, Rejection
from peakroute.domain.catalog import load_catalog
from peakroute.domain.channels import (
    DOUYIN_STATUS,
    JD_STATUS,
    PARSERS,
    TMALL_STATUS,
    WXMINI_STATUS,
    channel_order_id,
    is_urgent,
    normalize,
)

CHANNELS = ("tmall", "jd", "douyin", "wxmini")
_SHARED = Path(__file__).parents[2].parent / "shared" / "channel-samples"
# The project keeps a copy of the shared samples (checked equal in test_samples_copy.py).
SAMPLES = _SHARED if _SHARED.is_dir() else Path(__file__).parents[2] / "peakroute" / "data" / "samples"
FIXTURES = Path(__file__).parents[1] / "fixtures" / "channels"
CATALOG = load_catalog()
ISO_Z = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")
PATH = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*(\[\d+\])*(\.[A-Za-z_][A-Za-z0-9_]*(\[\d+\])*)*\Z")
#: Raw fields holding personal data: never copied into the canonical order.
PERSONAL = {
    "receiver_name", "receiver_mobile", "receiver_address", "receiver_zip", "buyer_nick", "fullname", "mobile",
    "fullAddress", "encrypt_detail", "encrypt_post_receiver", "encrypt_post_tel", "user_name", "tel_number",
    "detail_info", "postal_code",
}
TM = ("trade_fullinfo_get_response", "trade")
DY = ("data", "shop_order_detail")


def sample(channel: str) -> bytes:
    if not SAMPLES.is_dir():
        pytest.skip(f"shared channel samples not found at {SAMPLES}")
    return (SAMPLES / f"{channel}.json").read_bytes()


def sample_doc(channel: str) -> dict[str, Any]:
    return json.loads(sample(channel))


def fixture(channel: str, name: str) -> bytes:
    return (FIXTURES / channel / f"{name}.json").read_bytes()


def good_fixtures() -> list[tuple[str, str]]:
    return [(ch, p.stem) for ch in CHANNELS for p in sorted((FIXTURES / ch).glob("*.json"))]


def bad_fixtures() -> list[str]:
    return sorted(p.stem for p in (FIXTURES / "bad").glob("*.json"))


def norm(channel: str, doc: dict[str, Any] | bytes) -> CanonicalOrder:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc, ensure_ascii=False).encode()
    return normalize(channel, raw, CATALOG)


def rejection(channel: str, doc: dict[str, Any] | bytes) -> Rejection:
    with pytest.raises(Rejection) as err:
        norm(channel, doc)
    assert err.value.code in REJECTION_CODES
    return err.value


DELETE = object()


def put(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with ``path`` set to ``value`` (deleted when ``value`` is ``DELETE``)."""
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc



def lines(order: CanonicalOrder) -> list[tuple[str, int, int, int, bool]]:
    return [(ln.sku, ln.qty, ln.unit_price_fen, ln.paid_fen, ln.gift) for ln in order.lines]


def personal_values(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key in PERSONAL and isinstance(value, str) and value:
                found.add(value)
            found |= personal_values(value)
    elif isinstance(node, list):
        for value in node:
            found |= personal_values(value)
    return found


def assert_well_formed(order: CanonicalOrder, channel: str, raw: bytes, *, curated: bool = True) -> None:
    """Invariants every canonical order holds, whatever the channel.

    ``curated`` payloads (samples, fixtures) are also checked for unique line ids and for personal
    data leaking into the order; fuzzed ones may legitimately repeat short strings or ids.
    """
    assert order.channel == channel
    assert order.order_id == f"{channel}:{order.channel_order_id}"
    assert order.channel_order_id == channel_order_id(channel, raw)
    assert order.status in STATUSES
    assert ISO_Z.match(order.created_at) and ISO_Z.match(order.updated_at or "")
    assert order.paid_at is None or ISO_Z.match(order.paid_at)
    assert order.expires_at is None or ISO_Z.match(order.expires_at)
    if order.status == "pending_payment":
        assert order.paid_at is None
    assert order.reserve_on in ("order", "payment")
    assert order.lines and all(ln.qty > 0 and ln.unit_price_fen >= 0 and ln.paid_fen >= 0 for ln in order.lines)
    assert all(ln.sku in CATALOG for ln in order.lines)
    assert order.payment_fen >= 0 and order.freight_fen >= 0
    assert order.ship_to.province_code.isdigit() and len(order.ship_to.province_code) == 2
    assert order.urgent == is_urgent(order.notes.buyer, order.notes.merchant)
    as_json = orjson.dumps(order.to_dict())
    assert CanonicalOrder.from_dict(orjson.loads(as_json)) == order
    if not curated:
        return
    assert len({ln.line_id for ln in order.lines}) == len(order.lines)
    text = as_json.decode()
    for value in personal_values(orjson.loads(raw)):
        assert value not in text, f"personal data {value!r} leaked into the canonical order"


# --------------------------------------------------------------------------- samples


@pytest.mark.parametrize("channel", CHANNELS)
def test_every_sample_normalizes(channel: str) -> None:
    raw = sample(channel)
    order = normalize(channel, raw, CATALOG)
    assert_well_formed(order, channel, raw)
    assert order.status == "paid"
    assert normalize(channel, raw.decode(), CATALOG) == order  # str payloads too


def test_worked_example_tmall() -> None:
    order = normalize("tmall", sample("tmall"), CATALOG)
    assert order.order_id == "tmall:3851234567890123456"
    assert order.channel_order_id == "3851234567890123456"
    assert order.status == "paid"
    assert order.created_at == "2026-11-10T16:00:03Z"
    assert order.paid_at == "2026-11-10T16:00:05Z"
    assert order.updated_at == "2026-11-10T16:00:05Z"
    assert (order.payment_fen, order.freight_fen) == (41800, 0)
    assert lines(order) == [("SKU-EARBUD-W", 2, 21900, 39800, False), ("SKU-CASE-01", 1, 2000, 2000, False)]
    assert [ln.line_id for ln in order.lines] == ["3851234567890123457", "3851234567890123458"]
    assert [ln.channel_sku_id for ln in order.lines] == ["5012345678901", "5012345679999"]
    assert (order.ship_to.province, order.ship_to.province_code) == ("浙江省", "33")
    assert (order.ship_to.city, order.ship_to.district) == ("杭州市", "西湖区")
    assert order.notes.buyer == "双11 请尽快发货"
    assert order.urgent is False  # 尽快发货 is boilerplate
    assert (order.expires_at, order.reserve_on) == (None, "payment")


def test_jd_sample() -> None:
    order = normalize("jd", sample("jd"), CATALOG)
    assert order.order_id == "jd:290123456789"
    assert (order.status, order.created_at, order.paid_at) == ("paid", "2026-11-10T16:00:04Z", "2026-11-10T16:00:09Z")
    assert (order.ship_to.province, order.ship_to.province_code) == ("北京市", "11")
    assert order.urgent is True and order.notes.merchant == "加急"
    assert order.payment_fen == 55900
    assert lines(order) == [("SKU-KETTLE-2L", 2, 29950, 55900, False)]
    assert order.lines[0].line_id == order.lines[0].channel_sku_id == "100012345678"


def test_douyin_sample() -> None:
    order = normalize("douyin", sample("douyin"), CATALOG)
    assert order.order_id == "douyin:6912345678901234567"
    assert (order.created_at, order.paid_at) == ("2026-11-10T16:00:03Z", "2026-11-10T16:00:05Z")
    assert lines(order) == [("SKU-LIPSTICK-07", 2, 21900, 39800, False), ("SKU-MIRROR-MINI", 1, 0, 0, True)]
    assert [ln.line_id for ln in order.lines] == ["6912345678901234568", "6912345678901234569"]
    assert order.lines[0].channel_sku_id == "1780012345678"
    assert order.reserve_on == "order"  # reduce_stock_type 1
    assert order.expires_at is None  # paid
    assert (order.ship_to.province_code, order.ship_to.city, order.ship_to.district) == ("44", "深圳市", "南山区")


def test_wxmini_sample() -> None:
    order = normalize("wxmini", sample("wxmini"), CATALOG)
    assert order.order_id == "wxmini:3712345678901234567"
    assert (order.payment_fen, order.freight_fen) == (36000, 0)
    assert lines(order) == [("SKU-TEA-250G", 3, 12800, 36000, False)]
    assert order.lines[0].line_id == "1"
    assert (order.ship_to.province, order.ship_to.province_code) == ("四川省", "51")
    assert order.notes.buyer == "送人的，不要放发票" and not order.urgent


# --------------------------------------------------------------------------- fixtures

#: Key fields of every good fixture: status, paid?, payment, freight, lines, province code, city, urgent.
EXPECTED: dict[tuple[str, str], tuple[Any, ...]] = {
    ("tmall", "paid_multi_line"): ("paid", True, 310600, 1000, [
        ("SKU-PHONE-128", 1, 299900, 280900, False), ("SKU-CHARGER-65W", 2, 12900, 24800, False),
        ("SKU-CABLE-C", 1, 2900, 1900, False), ("SKU-CASE-01", 1, 2000, 2000, False)], "44", "广州市", False),
    ("tmall", "address_changed"): ("paid", True, 310600, 1000, [
        ("SKU-PHONE-128", 1, 299900, 280900, False), ("SKU-CHARGER-65W", 2, 12900, 24800, False),
        ("SKU-CABLE-C", 1, 2900, 1900, False), ("SKU-CASE-01", 1, 2000, 2000, False)], "44", "深圳市", False),
    ("tmall", "unpaid"): ("pending_payment", False, 21900, 0, [("SKU-EARBUD-W", 1, 21900, 21900, False)], "33", "杭州市", False),
    ("tmall", "cancelled_unpaid"): ("cancelled", False, 21900, 0, [("SKU-EARBUD-B", 1, 21900, 21900, False)], "33", "杭州市", False),
    ("tmall", "on_hold"): ("on_hold", True, 41800, 0, [
        ("SKU-EARBUD-W", 2, 21900, 39800, False), ("SKU-CASE-01", 1, 2000, 2000, False)], "33", "杭州市", False),
    ("tmall", "unicode_notes"): ("paid", True, 41800, 0, [
        ("SKU-EARBUD-W", 2, 21900, 39800, False), ("SKU-CASE-01", 1, 2000, 2000, False)], "45", "南宁市", True),
    ("tmall", "five_lines"): ("paid", True, 68330, 0, [
        ("SKU-RICE-5KG", 2, 8990, 17980, False), ("SKU-MILK-24", 3, 6500, 19500, False),
        ("SKU-NUTS-750G", 1, 9900, 8900, False), ("SKU-TISSUE-24", 4, 3990, 15960, False),
        ("SKU-DETERGENT-3KG", 1, 5990, 5990, False)], "15", "呼和浩特市", False),
    ("tmall", "shipped_tid_only"): ("shipped", True, 41800, 0, [
        ("SKU-EARBUD-W", 2, 21900, 39800, False), ("SKU-CASE-01", 1, 2000, 2000, False)], "33", "杭州市", False),
    ("tmall", "completed_no_sku_variant"): ("completed", True, 4900, 0, [("SKU-TOWEL-SET", 1, 4900, 4900, False)], "33", "杭州市", False),
    ("jd", "paid_multi_line"): ("paid", True, 200900, 1200, [
        ("SKU-AIRFRYER-5L", 1, 34900, 33236, False), ("SKU-HAIRDRYER", 2, 59900, 114087, False),
        ("SKU-PURIFIER", 1, 55000, 52377, False)], "31", "浦东新区", False),
    ("jd", "address_changed"): ("paid", True, 200900, 1200, [
        ("SKU-AIRFRYER-5L", 1, 34900, 33236, False), ("SKU-HAIRDRYER", 2, 59900, 114087, False),
        ("SKU-PURIFIER", 1, 55000, 52377, False)], "31", "徐汇区", False),
    ("jd", "unpaid"): ("pending_payment", False, 55900, 0, [("SKU-KETTLE-2L", 2, 29950, 55900, False)], "11", "朝阳区", False),
    ("jd", "cancelled"): ("cancelled", False, 55900, 0, [("SKU-KETTLE-2L", 2, 29950, 55900, False)], "11", "朝阳区", False),
    ("jd", "on_hold"): ("on_hold", True, 55900, 0, [("SKU-KETTLE-2L", 2, 29950, 55900, False)], "11", "朝阳区", False),
    ("jd", "unicode_notes"): ("paid", True, 55900, 0, [("SKU-KETTLE-2L", 2, 29950, 55900, False)], "65", "乌鲁木齐市", True),
    ("jd", "five_lines"): ("paid", True, 99999, 0, [
        ("SKU-COFFEE-BEANS", 1, 10000, 10000, False), ("SKU-BAIJIU-500", 1, 30000, 30000, False),
        ("SKU-DIAPER-L", 2, 15000, 29999, False), ("SKU-FORMULA-3", 1, 20000, 20000, False),
        ("SKU-STROLLER", 1, 10000, 10000, False)], "44", "佛山市", False),
    ("jd", "shipped_repeated_sku"): ("shipped", True, 10000, 0, [
        ("SKU-MASK-10P", 1, 5000, 5000, False), ("SKU-MASK-10P", 1, 5000, 5000, False)], "11", "朝阳区", False),
    ("jd", "completed_cod"): ("completed", False, 55900, 0, [("SKU-KETTLE-2L", 2, 29950, 55900, False)], "11", "朝阳区", False),
    ("douyin", "paid_multi_line"): ("paid", True, 119700, 0, [
        ("SKU-SERUM-30ML", 2, 59000, 110000, False), ("SKU-MASK-10P", 1, 9900, 9700, False),
        ("SKU-SAMPLE-KIT", 1, 0, 0, True)], "32", "苏州市", False),
    ("douyin", "address_changed"): ("paid", True, 119700, 0, [
        ("SKU-SERUM-30ML", 2, 59000, 110000, False), ("SKU-MASK-10P", 1, 9900, 9700, False),
        ("SKU-SAMPLE-KIT", 1, 0, 0, True)], "32", "南京市", False),
    ("douyin", "unpaid_reserve_on_order"): ("pending_payment", False, 19900, 0, [
        ("SKU-LIPSTICK-07", 1, 21900, 19900, False)], "44", "深圳市", False),
    ("douyin", "cancelled"): ("cancelled", False, 39800, 0, [
        ("SKU-LIPSTICK-07", 2, 21900, 39800, False), ("SKU-MIRROR-MINI", 1, 0, 0, True)], "44", "深圳市", False),
    ("douyin", "on_hold_risk_review"): ("on_hold", True, 39800, 0, [
        ("SKU-LIPSTICK-07", 2, 21900, 39800, False), ("SKU-MIRROR-MINI", 1, 0, 0, True)], "44", "深圳市", False),
    ("douyin", "gift_line"): ("paid", True, 21900, 0, [
        ("SKU-LIPSTICK-12", 1, 21900, 21900, False), ("SKU-TOTE-BAG", 1, 0, 0, True)], "44", "深圳市", False),
    ("douyin", "unicode_notes"): ("paid", True, 39800, 0, [
        ("SKU-LIPSTICK-07", 2, 21900, 39800, False), ("SKU-MIRROR-MINI", 1, 0, 0, True)], "64", "银川市", True),
    ("douyin", "five_lines"): ("shipped", True, 102300, 0, [
        ("SKU-DOWN-JACKET", 1, 59900, 56900, False), ("SKU-THERMAL-SET", 2, 9900, 19800, False),
        ("SKU-SCARF-CASH", 1, 19900, 17900, False), ("SKU-SNEAKER-42", 1, 7700, 7700, False),
        ("SKU-MIRROR-MINI", 1, 0, 0, True)], "44", "深圳市", False),
    ("wxmini", "paid_multi_line"): ("paid", True, 40600, 1000, [
        ("SKU-TEA-250G", 2, 12800, 24600, False), ("SKU-COFFEE-BEANS", 1, 15800, 15000, False)], "42", "武汉市", False),
    ("wxmini", "address_changed"): ("paid", True, 40600, 1000, [
        ("SKU-TEA-250G", 2, 12800, 24600, False), ("SKU-COFFEE-BEANS", 1, 15800, 15000, False)], "42", "宜昌市", False),
    ("wxmini", "unpaid"): ("pending_payment", False, 36000, 0, [("SKU-TEA-250G", 3, 12800, 36000, False)], "51", "成都市", False),
    ("wxmini", "cancelled_unpaid"): ("cancelled", False, 36000, 0, [("SKU-TEA-250G", 3, 12800, 36000, False)], "51", "成都市", False),
    ("wxmini", "partly_shipped"): ("shipped", True, 36000, 0, [("SKU-TEA-250G", 3, 12800, 36000, False)], "51", "成都市", False),
    ("wxmini", "unicode_notes"): ("completed", True, 36000, 0, [("SKU-TEA-250G", 3, 12800, 36000, False)], "54", "拉萨市", True),
    ("wxmini", "five_lines"): ("shipped", True, 147680, 0, [
        ("SKU-DUVET-QUEEN", 1, 89900, 85000, False), ("SKU-PILLOW-LATEX", 2, 19900, 38000, False),
        ("SKU-TOWEL-SET", 3, 4900, 14700, False), ("SKU-TISSUE-24", 1, 3990, 3990, False),
        ("SKU-DETERGENT-3KG", 1, 5990, 5990, False)], "50", "重庆市", False),
    ("wxmini", "no_errcode_no_ext_info"): ("paid", True, 36000, 0, [("SKU-TEA-250G", 3, 12800, 36000, False)], "51", "成都市", False),
}


def test_every_good_fixture_has_expectations() -> None:
    assert set(good_fixtures()) == set(EXPECTED)


@pytest.mark.parametrize(("channel", "name"), good_fixtures())
def test_good_fixture(channel: str, name: str) -> None:
    raw = fixture(channel, name)
    order = normalize(channel, raw, CATALOG)
    assert_well_formed(order, channel, raw)
    status, paid, payment, freight, expected_lines, province_code, city, urgent = EXPECTED[(channel, name)]
    assert order.status == status
    assert (order.paid_at is not None) == paid
    assert (order.payment_fen, order.freight_fen) == (payment, freight)
    assert lines(order) == expected_lines
    assert (order.ship_to.province_code, order.ship_to.city, order.urgent) == (province_code, city, urgent)
    assert sum(ln.paid_fen for ln in order.lines) + order.freight_fen == order.payment_fen  # fixtures are coherent


@pytest.mark.parametrize("channel", CHANNELS)
def test_address_change_is_the_same_order_later_elsewhere(channel: str) -> None:
    before = normalize(channel, fixture(channel, "paid_multi_line"), CATALOG)
    after = normalize(channel, fixture(channel, "address_changed"), CATALOG)
    assert after.order_id == before.order_id
    assert (after.updated_at or "") > (before.updated_at or "")
    assert after.ship_to.city != before.ship_to.city
    assert after.lines == before.lines


def test_unicode_and_emoji_notes_survive_untouched() -> None:
    order = normalize("tmall", fixture("tmall", "unicode_notes"), CATALOG)
    assert order.notes.buyer == "生日礼物🎂 请包装好～ 加急！！"
    assert order.notes.merchant == "备注：Ｎｏ．１ VIP 客户 ✨"
    assert order.ship_to.province == "广西壮族自治区"
    wx = normalize("wxmini", fixture("wxmini", "unicode_notes"), CATALOG)
    assert wx.notes.buyer == "老板😄 急件，周五前要 🙏" and wx.urgent


def test_jd_repeated_sku_gets_numbered_line_ids() -> None:
    order = normalize("jd", fixture("jd", "shipped_repeated_sku"), CATALOG)
    assert [ln.line_id for ln in order.lines] == ["100012300201-1", "100012300201-2"]
    assert {ln.channel_sku_id for ln in order.lines} == {"100012300201"}


def test_jd_allocation_covers_goods_paid_exactly() -> None:
    order = normalize("jd", fixture("jd", "paid_multi_line"), CATALOG)
    assert sum(ln.paid_fen for ln in order.lines) == order.payment_fen - order.freight_fen == 199700


def test_jd_unpaid_marker_means_pending_payment() -> None:
    order = normalize("jd", fixture("jd", "unpaid"), CATALOG)
    assert (order.status, order.paid_at) == ("pending_payment", None)
    missing = put(sample_doc("jd"), ("paymentConfirmTime",), DELETE)
    assert (norm("jd", missing).status, norm("jd", missing).paid_at) == ("pending_payment", None)


def test_jd_cash_on_delivery_keeps_its_status_without_pay_time() -> None:
    order = normalize("jd", fixture("jd", "completed_cod"), CATALOG)
    assert (order.status, order.paid_at) == ("completed", None)
    held = norm("jd", put(sample_doc("jd"), ("orderState",), "PAUSE") | {"paymentConfirmTime": "0001-01-01 00:00:00"})
    assert (held.status, held.paid_at) == ("on_hold", None)


def test_douyin_unpaid_order_expires_and_reserves_at_order_time() -> None:
    order = normalize("douyin", fixture("douyin", "unpaid_reserve_on_order"), CATALOG)
    assert order.created_at == "2026-11-10T16:03:20Z"
    assert order.expires_at == "2026-11-10T16:33:20Z"  # + order_expire_time 1800 s
    assert order.reserve_on == "order"
    no_ttl = json.loads(fixture("douyin", "unpaid_reserve_on_order"))
    assert norm("douyin", put(no_ttl, DY + ("order_expire_time",), 0)).expires_at is None
    assert norm("douyin", put(no_ttl, DY + ("order_expire_time",), DELETE)).expires_at is None
    bad = rejection("douyin", put(no_ttl, DY + ("order_expire_time",), -5))
    assert (bad.code, bad.field) == ("bad_timestamp", "data.shop_order_detail.order_expire_time")


def test_douyin_reserve_on_payment_when_stock_is_taken_at_payment() -> None:
    assert normalize("douyin", fixture("douyin", "paid_multi_line"), CATALOG).reserve_on == "payment"


def test_douyin_out_sku_id_wins_over_code() -> None:
    doc = put(sample_doc("douyin"), DY + ("sku_order_list", 0, "out_sku_id"), "SKU-LIPSTICK-12")
    assert norm("douyin", doc).lines[0].sku == "SKU-LIPSTICK-12"
    doc = put(doc, DY + ("sku_order_list", 0, "out_sku_id"), "SKU-NOPE")
    err = rejection("douyin", doc)
    assert (err.code, err.field) == ("unknown_sku", "data.shop_order_detail.sku_order_list[0].out_sku_id")


def test_catalog_gift_sku_is_a_gift_even_unflagged() -> None:
    doc = put(sample_doc("douyin"), DY + ("sku_order_list", 1, "given_product_type"), "")
    assert norm("douyin", doc).lines[1].gift is True  # SKU-MIRROR-MINI is a gift in the catalog


def test_tmall_tid_fallback_and_float_tid() -> None:
    order = normalize("tmall", fixture("tmall", "shipped_tid_only"), CATALOG)
    assert order.channel_order_id == "3851234567890200700"
    doc = put(sample_doc("tmall"), TM + ("tid_str",), DELETE)
    raw = json.dumps(doc).replace("3851234567890123456", "38512345678901234567890").encode()  # > 2^64
    err = rejection("tmall", raw)
    assert (err.code, err.field) == ("wrong_type", "trade_fullinfo_get_response.trade.tid")


def test_tmall_item_without_sku_variants_uses_outer_iid_and_num_iid() -> None:
    order = normalize("tmall", fixture("tmall", "completed_no_sku_variant"), CATALOG)
    assert (order.lines[0].sku, order.lines[0].channel_sku_id, order.lines[0].line_id) == (
        "SKU-TOWEL-SET", "680012399999", "3851234567890200801")
    assert order.updated_at == order.paid_at  # no `modified`: the later of created and paid


def test_sku_codes_are_stripped() -> None:
    doc = put(sample_doc("tmall"), TM + ("orders", "order", 0, "outer_sku_id"), " SKU-EARBUD-W\t")
    assert norm("tmall", doc).lines[0].sku == "SKU-EARBUD-W"


def test_wxmini_errcode_must_be_zero_when_present() -> None:
    err = rejection("wxmini", put(sample_doc("wxmini"), ("errcode",), "0"))
    assert (err.code, err.field) == ("wrong_type", "errcode")


def test_missing_pay_time_on_a_paid_status_names_the_pay_field() -> None:
    doc = put(sample_doc("wxmini"), ("order", "order_detail", "pay_info", "pay_time"), 0)
    err = rejection("wxmini", doc)
    assert (err.code, err.field) == ("missing_field", "order.order_detail.pay_info.pay_time")


def test_an_unpaid_status_drops_a_stray_pay_time() -> None:
    doc = put(sample_doc("douyin"), DY + ("order_status",), 1)
    assert norm("douyin", doc).paid_at is None


def test_pay_time_tolerates_a_minute_of_clock_skew() -> None:
    doc = sample_doc("douyin")
    created = doc["data"]["shop_order_detail"]["create_time"]
    assert norm("douyin", put(doc, DY + ("pay_time",), created - 60)).paid_at == "2026-11-10T15:59:03Z"
    err = rejection("douyin", put(doc, DY + ("pay_time",), created - 61))
    assert (err.code, err.field) == ("bad_timestamp", "data.shop_order_detail.pay_time")


def test_jd_quantity_may_be_an_integer_and_tmall_a_digit_string() -> None:
    assert norm("jd", put(sample_doc("jd"), ("itemInfoList", 0, "itemTotal"), 2)).lines[0].qty == 2
    assert norm("tmall", put(sample_doc("tmall"), TM + ("orders", "order", 1, "num"), "3")).lines[1].qty == 3


# --------------------------------------------------------------------------- status tables


def _status_cases() -> list[tuple[str, Any, str]]:
    return (
        [("tmall", k, v) for k, v in TMALL_STATUS.items()] + [("jd", k, v) for k, v in JD_STATUS.items()]
        + [("douyin", k, v) for k, v in DOUYIN_STATUS.items()] + [("wxmini", k, v) for k, v in WXMINI_STATUS.items()]
    )


STATUS_PATH = {"tmall": TM + ("status",), "jd": ("orderState",), "douyin": DY + ("order_status",), "wxmini": ("order", "status")}


@pytest.mark.parametrize(("channel", "code", "status"), _status_cases())
def test_status_mapping(channel: str, code: Any, status: str) -> None:
    order = norm(channel, put(sample_doc(channel), STATUS_PATH[channel], code))
    assert order.status == status
    assert (order.paid_at is None) == (status == "pending_payment")  # the samples are paid


def test_status_tables_match_the_spec() -> None:
    assert TMALL_STATUS["TRADE_NO_CREATE_PAY"] == "pending_payment"
    assert JD_STATUS == {"WAIT_SELLER_STOCK_OUT": "paid", "WAIT_GOODS_RECEIVE_CONFIRM": "shipped",
                         "FINISHED_L": "completed", "TRADE_CANCELED": "cancelled", "LOCKED": "on_hold", "PAUSE": "on_hold"}
    assert DOUYIN_STATUS == {1: "pending_payment", 105: "on_hold", 2: "paid", 101: "shipped", 3: "shipped",
                             4: "cancelled", 5: "completed"}
    assert WXMINI_STATUS == {10: "pending_payment", 20: "paid", 21: "shipped", 30: "shipped", 100: "completed",
                             250: "cancelled"}
    assert set(TMALL_STATUS.values()) | set(JD_STATUS.values()) <= set(STATUSES)


@pytest.mark.parametrize(("channel", "code"), [("douyin", "2"), ("douyin", True), ("wxmini", 20.0), ("tmall", 1), ("jd", ["LOCKED"])])
def test_status_of_the_wrong_type_is_bad_status(channel: str, code: Any) -> None:
    assert rejection(channel, put(sample_doc(channel), STATUS_PATH[channel], code)).code == "bad_status"


# --------------------------------------------------------------------------- rejections

#: The field each bad fixture must be rejected at.
EXPECTED_BAD_FIELDS: dict[str, str] = {
    "douyin__bad_money__paid_gift": "data.shop_order_detail.sku_order_list[1].pay_amount",
    "douyin__bad_money__string_fen": "data.shop_order_detail.pay_amount",
    "douyin__bad_quantity__float": "data.shop_order_detail.sku_order_list[0].item_num",
    "douyin__bad_status__unknown": "data.shop_order_detail.order_status",
    "douyin__bad_timestamp__milliseconds": "data.shop_order_detail.create_time",
    "douyin__channel_error__code": "code",
    "douyin__missing_field__no_code": "code",
    "douyin__missing_field__no_sku_code": "data.shop_order_detail.sku_order_list[0].code",
    "douyin__missing_field__paid_without_pay_time": "data.shop_order_detail.pay_time",
    "douyin__wrong_type__post_addr_string": "data.shop_order_detail.post_addr",
    "ebay__unknown_channel__not_a_channel": "channel",
    "jd__bad_money__freight_above_payment": "orderPayment",
    "jd__bad_money__negative_price": "itemInfoList[0].jdPrice",
    "jd__bad_province__old_name": "consigneeInfo.province",
    "jd__bad_quantity__decimal": "itemInfoList[0].itemTotal",
    "jd__bad_quantity__empty": "itemInfoList[0].itemTotal",
    "jd__bad_quantity__negative": "itemInfoList[0].itemTotal",
    "jd__bad_quantity__zero": "itemInfoList[0].itemTotal",
    "jd__bad_status__unknown": "orderState",
    "jd__bad_timestamp__before_2009": "orderStartTime",
    "jd__bad_timestamp__unpaid_marker_as_created": "orderStartTime",
    "jd__malformed_json__top_level_array": "$",
    "jd__missing_field__no_consignee": "consigneeInfo",
    "jd__missing_field__no_outer_sku_id": "itemInfoList[0].outerSkuId",
    "jd__unknown_sku__not_in_catalog": "itemInfoList[0].outerSkuId",
    "tmall__bad_money__json_number": "trade_fullinfo_get_response.trade.payment",
    "tmall__bad_money__three_decimals": "trade_fullinfo_get_response.trade.orders.order[0].price",
    "tmall__bad_province__foreign": "trade_fullinfo_get_response.trade.receiver_state",
    "tmall__bad_quantity__zero": "trade_fullinfo_get_response.trade.orders.order[1].num",
    "tmall__bad_status__unknown": "trade_fullinfo_get_response.trade.status",
    "tmall__bad_timestamp__feb_30": "trade_fullinfo_get_response.trade.created",
    "tmall__bad_timestamp__paid_before_created": "trade_fullinfo_get_response.trade.pay_time",
    "tmall__channel_error__error_response": "error_response",
    "tmall__malformed_json__truncated": "$",
    "tmall__missing_field__no_orders": "trade_fullinfo_get_response.trade.orders.order",
    "tmall__missing_field__no_tid": "trade_fullinfo_get_response.trade.tid_str",
    "tmall__missing_field__paid_without_pay_time": "trade_fullinfo_get_response.trade.pay_time",
    "tmall__unknown_sku__typo": "trade_fullinfo_get_response.trade.orders.order[1].outer_sku_id",
    "tmall__wrong_type__orders_is_list": "trade_fullinfo_get_response.trade.orders",
    "wxmini__bad_money__negative_real_price": "order.order_detail.product_infos[0].real_price",
    "wxmini__bad_province__city_as_province": "order.order_detail.delivery_info.address_info.province_name",
    "wxmini__bad_quantity__boolean": "order.order_detail.product_infos[0].sku_cnt",
    "wxmini__bad_status__unknown": "order.status",
    "wxmini__channel_error__errcode": "errcode",
    "wxmini__malformed_json__not_utf8": "$",
    "wxmini__missing_field__paid_without_pay_info": "order.order_detail.pay_info.pay_time",
    "wxmini__unknown_sku__not_in_catalog": "order.order_detail.product_infos[0].out_sku_id",
    "wxmini__wrong_type__product_infos_object": "order.order_detail.product_infos",
}


def test_every_bad_fixture_has_an_expected_field() -> None:
    assert set(bad_fixtures()) == set(EXPECTED_BAD_FIELDS)


def test_bad_fixtures_cover_every_rejection_code() -> None:
    assert {name.split("__")[1] for name in bad_fixtures()} == set(REJECTION_CODES)


@pytest.mark.parametrize("name", bad_fixtures())
def test_bad_fixture(name: str) -> None:
    channel, code, _ = name.split("__")
    with pytest.raises(Rejection) as err:
        normalize(channel, (FIXTURES / "bad" / f"{name}.json").read_bytes(), CATALOG)
    assert err.value.code == code, err.value
    assert err.value.field == EXPECTED_BAD_FIELDS[name]
    assert err.value.detail
    assert err.value.to_dict() == {"error": code, "field": err.value.field, "detail": err.value.detail}


@pytest.mark.parametrize("channel", ["", "TMALL", "taobao", None, 3, ["tmall"], {"a": 1}])
def test_unknown_channel(channel: Any) -> None:
    with pytest.raises(Rejection) as err:
        normalize(channel, b"{}", CATALOG)
    assert (err.value.code, err.value.field) == ("unknown_channel", "channel")


@pytest.mark.parametrize("raw", [b"", b"null", b"[]", b'"x"', b"1", b"\xff\xfe", b"{", "{\"a\": \"\ud800\"}", b"NaN", None, 42])
def test_malformed_json(raw: Any) -> None:
    with pytest.raises(Rejection) as err:
        normalize("tmall", raw, CATALOG)
    assert (err.value.code, err.value.field) == ("malformed_json", "$")


@pytest.mark.parametrize(
    ("channel", "path", "value", "code", "field"),
    [
        ("tmall", TM + ("orders", "order", 0), "x", "wrong_type", "trade_fullinfo_get_response.trade.orders.order[0]"),
        ("tmall", TM + ("orders", "order", 0), None, "missing_field", "trade_fullinfo_get_response.trade.orders.order[0]"),
        ("tmall", TM + ("tid_str",), "  ", "missing_field", "trade_fullinfo_get_response.trade.tid_str"),
        ("tmall", TM + ("created",), None, "missing_field", "trade_fullinfo_get_response.trade.created"),
        ("tmall", TM + ("payment",), "", "bad_money", "trade_fullinfo_get_response.trade.payment"),
        ("tmall", TM + ("payment",), None, "missing_field", "trade_fullinfo_get_response.trade.payment"),
        ("tmall", TM + ("buyer_message",), 5, "wrong_type", "trade_fullinfo_get_response.trade.buyer_message"),
        ("tmall", TM + ("receiver_state",), "", "missing_field", "trade_fullinfo_get_response.trade.receiver_state"),
        ("tmall", TM + ("receiver_state",), ["浙江省"], "wrong_type", "trade_fullinfo_get_response.trade.receiver_state"),
        ("tmall", TM + ("orders", "order", 0, "num"), 10_000_000, "bad_quantity", "trade_fullinfo_get_response.trade.orders.order[0].num"),
        ("jd", ("itemInfoList",), [], "missing_field", "itemInfoList"),
        ("jd", ("itemInfoList", 0, "itemTotal"), None, "missing_field", "itemInfoList[0].itemTotal"),
        ("jd", ("itemInfoList", 0, "itemTotal"), "１", "bad_quantity", "itemInfoList[0].itemTotal"),
        ("jd", ("itemInfoList", 0, "skuId"), 1.5, "wrong_type", "itemInfoList[0].skuId"),
        ("jd", ("paymentConfirmTime",), "2026-11-11", "bad_timestamp", "paymentConfirmTime"),
        ("jd", ("modified",), "yesterday", "bad_timestamp", "modified"),
        ("jd", ("freightPrice",), "1e2", "bad_money", "freightPrice"),
        ("jd", ("consigneeInfo", "province"), None, "missing_field", "consigneeInfo.province"),
        ("douyin", DY + ("post_addr", "province"), None, "missing_field", "data.shop_order_detail.post_addr.province"),
        ("douyin", DY + ("post_addr", "city"), "深圳", "wrong_type", "data.shop_order_detail.post_addr.city"),
        ("douyin", DY + ("sku_order_list", 0, "sku_id"), -1, "wrong_type", "data.shop_order_detail.sku_order_list[0].sku_id"),
        ("douyin", DY + ("sku_order_list", 0, "goods_price"), 219.0, "bad_money", "data.shop_order_detail.sku_order_list[0].goods_price"),
        ("douyin", DY + ("post_amount",), -1, "bad_money", "data.shop_order_detail.post_amount"),
        ("douyin", ("data",), [], "wrong_type", "data"),
        ("douyin", ("code",), 0, "channel_error", "code"),
        ("wxmini", ("order", "order_detail", "ext_info"), "x", "wrong_type", "order.order_detail.ext_info"),
        ("wxmini", ("order", "order_detail", "pay_info"), [], "wrong_type", "order.order_detail.pay_info"),
        ("wxmini", ("order", "create_time"), "1794326404", "bad_timestamp", "order.create_time"),
        ("wxmini", ("order", "order_detail", "price_info"), None, "missing_field", "order.order_detail.price_info"),
        ("wxmini", ("order", "order_detail", "product_infos", 0, "out_sku_id"), "", "missing_field",
         "order.order_detail.product_infos[0].out_sku_id"),
    ],
)
def test_targeted_rejections(channel: str, path: tuple[Any, ...], value: Any, code: str, field: str) -> None:
    err = rejection(channel, put(sample_doc(channel), path, value))
    assert (err.code, err.field) == (code, field)


# --------------------------------------------------------------------------- urgency and keys


@pytest.mark.parametrize(
    ("notes", "urgent"),
    [
        (("加急",), True), (("", "急件 今天发"), True), (("特急！",), True), (("URGENT pls",), True),
        (("Urgent",), True), (("双11 请尽快发货",), False), (("", ""), False), (("急",), False),
        (("送人的，不要放发票", "顺丰"), False),
    ],
)
def test_is_urgent(notes: tuple[str, ...], urgent: bool) -> None:
    assert is_urgent(*notes) is urgent


@pytest.mark.parametrize("channel", CHANNELS)
def test_channel_order_id_of_samples(channel: str) -> None:
    assert channel_order_id(channel, sample(channel)) == normalize(channel, sample(channel), CATALOG).channel_order_id


@pytest.mark.parametrize(
    ("channel", "raw"),
    [("tmall", b"{"), ("jd", b"[]"), ("jd", b'{"orderId": null}'), ("jd", b'{"orderId": ""}'), ("ebay", b'{"orderId": "1"}'),
     (None, b"{}"), (["jd"], b"{}"), ("jd", None), ("douyin", b'{"data": []}'), ("wxmini", b'{"order": {"order_id": 1.5}}')],
)
def test_channel_order_id_is_none_when_absent_or_unparseable(channel: Any, raw: Any) -> None:
    assert channel_order_id(channel, raw) is None


def test_channel_order_id_without_validating_the_rest() -> None:
    assert channel_order_id("jd", b'{"orderId": "42", "itemInfoList": "garbage"}') == "42"
    assert channel_order_id("jd", b'{"orderId": 42}') == "42"


def test_parsers_are_the_four_channels() -> None:
    assert set(PARSERS) == set(CHANNELS)


# --------------------------------------------------------------------------- property tests

JSON_LEAVES = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
    | st.sampled_from(["", " ", "0", "-1", "2.5", "1e3", "0.00", "219.005", "0001-01-01 00:00:00",
                      "2026-02-30 00:00:00", "2026-11-11 00:00:03", "浙江", "北京", "加急", "FREE",
                      "SKU-EARBUD-W", "WAIT_SELLER_STOCK_OUT", "🙂"])
    | st.sampled_from([0, 1, 2, 10, 20, 105, 250, 10000, 1794326403, 2**53 + 1, -(2**63), 2**64 - 1])
)
JSON_VALUES = st.recursive(
    JSON_LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_outcome(channel: str, raw: bytes, doc: Any = None) -> None:
    """``normalize`` gives a well-formed order or a Rejection with a known code and a field path."""
    try:
        order = normalize(channel, raw, CATALOG)
    except Rejection as err:
        assert err.code in REJECTION_CODES
        assert isinstance(err.field, str) and err.field
        assert err.field == "$" or PATH.match(err.field), err.field
        if isinstance(doc, dict) and err.field != "$" and err.code != "missing_field":
            assert re.split(r"[.\[]", err.field)[0] in doc, err.field
    else:
        assert_well_formed(order, channel, raw, curated=False)
    key = channel_order_id(channel, raw)
    assert key is None or isinstance(key, str)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, prefix + (i,))
    return out


def _base_docs(channel: str) -> list[bytes]:
    docs = [fixture(channel, name) for ch, name in good_fixtures() if ch == channel]
    if SAMPLES.is_dir():
        docs.append(sample(channel))
    return docs


@pytest.mark.parametrize("channel", CHANNELS)
@given(data=st.data())
@PROPERTY
def test_mutated_payloads_give_an_order_or_a_rejection(channel: str, data: st.DataObject) -> None:
    doc = json.loads(data.draw(st.sampled_from(_base_docs(channel))))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        paths = _paths(doc)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(JSON_VALUES)
    raw = json.dumps(doc, ensure_ascii=False).encode()
    _check_outcome(channel, raw, doc)


@pytest.mark.parametrize("channel", CHANNELS)
@given(raw=st.binary(max_size=200))
@PROPERTY
def test_random_bytes_are_rejected_cleanly(channel: str, raw: bytes) -> None:
    _check_outcome(channel, raw)


@pytest.mark.parametrize("channel", CHANNELS)
@given(doc=JSON_VALUES)
@PROPERTY
def test_random_json_is_rejected_cleanly(channel: str, doc: Any) -> None:
    _check_outcome(channel, json.dumps(doc).encode(), doc)


def _mostly(usual: st.SearchStrategy[Any], *rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` 8 times in 10, else one of ``rare``: keeps enough of a document valid to reach deep fields."""
    return st.integers(0, 9).flatmap(lambda i: usual if i < 8 else st.one_of(*rare))


def _shaped(node: Any) -> st.SearchStrategy[Any]:
    """Documents shaped like ``node``: same keys, original or random leaves, random subtrees mixed in."""
    if isinstance(node, dict):
        fields = {k: _shaped(v) for k, v in node.items()}
        return _mostly(st.fixed_dictionaries(fields), st.fixed_dictionaries({}, optional=fields), JSON_VALUES)
    if isinstance(node, list) and node:
        return _mostly(st.lists(_shaped(node[0]), min_size=1, max_size=3), JSON_VALUES)
    return _mostly(st.just(node), JSON_LEAVES)


@pytest.mark.parametrize("channel", CHANNELS)
@given(data=st.data())
@PROPERTY
def test_randomly_shaped_payloads_give_an_order_or_a_rejection(channel: str, data: st.DataObject) -> None:
    doc = data.draw(_shaped(sample_doc(channel)))
    _check_outcome(channel, json.dumps(doc, ensure_ascii=False).encode(), doc)
