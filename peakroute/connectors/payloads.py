"""Raw channel payloads built from a channel-neutral simulated order.

The simulator decides *what* happens to an order (:class:`SimOrder`); this module decides how each
channel *says* it, byte for byte in the channel's own format (``../shared/channel-samples``):
response wrappers, field names, yuan strings vs integer fen, Beijing wall-clock strings vs Unix
seconds, status enumerations, masked buyer data.  Keeping the two apart means the router is tested
against the same four dialects it meets in production, and a format fix lands in one place.

Everything here is pure: the same :class:`SimOrder` always gives the same bytes (a channel
re-send is the exact same payload again).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import orjson

from ..domain.provinces import Province

#: Canonical statuses the simulator produces (see ``peakroute.domain.canonical.STATUSES``).
PENDING = "pending_payment"
PAID = "paid"
CANCELLED = "cancelled"

_BEIJING_OFFSET_S = 8 * 3600
#: JD's ``paymentConfirmTime`` while an order is unpaid.
JD_UNPAID_TIME = "0001-01-01 00:00:00"
#: Provincial-level cities: channels name them without the 市 in some fields (Tmall, JD).
MUNICIPALITIES = frozenset({"11", "12", "31", "50"})
#: JD's own province ids (``consigneeInfo.provinceId``); Hong Kong and Macau share 港澳.
JD_PROVINCE_IDS: dict[str, str] = {
    "11": "1", "31": "2", "12": "3", "50": "4", "13": "5", "14": "6", "41": "7", "21": "8",
    "22": "9", "23": "10", "15": "11", "32": "12", "37": "13", "34": "14", "33": "15", "35": "16",
    "42": "17", "43": "18", "44": "19", "45": "20", "36": "21", "51": "22", "46": "23", "52": "24",
    "53": "25", "54": "26", "61": "27", "62": "28", "63": "29", "64": "30", "65": "31", "71": "32",
    "81": "52993", "82": "52993",
}


# --------------------------------------------------------------------------------------------
# The channel-neutral order
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimAddress:
    """Where an order ships, with the codes and postcode the channels put next to the names."""

    province: Province
    city: str  #: e.g. 深圳市
    city_code: str  #: 4-digit GB/T 2260 prefix, e.g. "4403" (Douyin ``city.id``)
    district: str  #: e.g. 南山区
    district_code: str  #: 6-digit GB/T 2260 code, e.g. "440305"
    street: str  #: township-level name, e.g. 粤海街道 (Douyin ``street``, JD ``county`` in municipalities)
    road: str  #: road for the masked detail line, e.g. 文三路
    zip_code: str


@dataclass(frozen=True, slots=True)
class SimBuyer:
    """The masked buyer identity channels expose to merchants (names and phones are never clear)."""

    name: str  #: masked, e.g. "张*"
    mobile: str  #: masked, e.g. "138****0000"
    nick: str  #: Tmall buyer nick, masked, e.g. "t**1"
    secret: int  #: seed of the ``#ENC#…#`` ciphertexts Douyin sends instead of clear PII


@dataclass(slots=True)
class SimLine:
    """One order line.  ``paid_fen`` is after the order-level discount share; gifts are free.

    Not frozen only because frozen dataclasses construct ~3x slower and the simulator builds
    tens of thousands per second; treat instances as immutable.
    """

    sku: str
    name: str
    qty: int
    unit_price_fen: int
    paid_fen: int
    gift: bool = False

    @property
    def total_fen(self) -> int:
        """List value of the line (price x quantity), before discounts."""
        return self.unit_price_fen * self.qty


@dataclass(slots=True)
class SimOrder:
    """What happened to an order, in canonical terms; payload builders render it per channel.

    Treat as immutable (not frozen for construction speed, like :class:`SimLine`): a state change
    is a new instance via ``dataclasses.replace``, because earlier events keep referring to the
    state they were built from.

    ``created``/``paid``/``updated`` are Unix seconds; ``paid`` is None while unpaid (an expired
    unpaid order stays unpaid).  ``updated`` is the channel's modification time and strictly grows
    with every change, which is how the router tells a newer state from a stale re-send.
    """

    channel: str
    channel_order_id: str
    status: str  #: pending_payment | paid | cancelled
    created: int
    paid: int | None
    updated: int
    lines: tuple[SimLine, ...]
    address: SimAddress
    buyer: SimBuyer
    buyer_note: str = ""
    merchant_note: str = ""
    freight_fen: int = 0
    #: Douyin: 1 = stock taken when the order is placed, 2 = when it is paid.
    reduce_stock_type: int = 2
    #: Douyin ``order_expire_time``: seconds an unpaid order stays open.
    expire_s: int = 1800

    @property
    def goods_fen(self) -> int:
        """List value of all lines, before discounts."""
        return sum(line.total_fen for line in self.lines)

    @property
    def discount_fen(self) -> int:
        """Order-level discount (满减) the channel granted, spread over the lines' ``paid_fen``."""
        return self.goods_fen - sum(line.paid_fen for line in self.lines)

    @property
    def payment_fen(self) -> int:
        """What the buyer pays for the order: discounted goods plus freight."""
        return sum(line.paid_fen for line in self.lines) + self.freight_fen

    @property
    def province(self) -> Province:
        return self.address.province

    @property
    def city(self) -> str:
        return self.address.city

    @property
    def district(self) -> str:
        return self.address.district


# --------------------------------------------------------------------------------------------
# Channel order ids
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _IdFormat:
    prefix: str
    body_digits: int  #: scrambled digits after the prefix
    step: int  #: spacing between order ids: room for Tmall oid / Douyin sub-order ids (id + n)


#: Lengths as in the samples: tmall 19 digits (> 2^53, hence ``tid_str``), jd 12, douyin 19, wxmini 19.
_ID_FORMATS: dict[str, _IdFormat] = {
    "tmall": _IdFormat("385", 16, 10),
    "jd": _IdFormat("2", 11, 1),
    "douyin": _IdFormat("69", 17, 10),
    "wxmini": _IdFormat("37", 17, 1),
}


def _mix64(x: int) -> int:
    """SplitMix64 finalizer: spreads a small seed over 64 bits (different seeds, far-apart ids)."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


class OrderIdAllocator:
    """Channel order ids that look like the channels' (random-looking, right length) and never
    repeat within a run.

    The n-th id of a channel is an affine bijection of n modulo a power of ten, so uniqueness
    needs no memory of issued ids; the offset comes from the seed, so runs with different seeds
    do not collide in practice.
    """

    _MULTIPLIER = 6_364_136_223_846_793_003  # odd, not a multiple of 5: coprime to every 10^k

    def __init__(self, seed: int) -> None:
        self._counters = {ch: 0 for ch in _ID_FORMATS}
        # channel -> (offset, id space, step, prefix * 10^digits): ids are plain integers.
        self._plans = {
            ch: (_mix64(seed * 31 + i), 10 ** fmt.body_digits // fmt.step, fmt.step,
                 int(fmt.prefix) * 10 ** fmt.body_digits)
            for i, (ch, fmt) in enumerate(_ID_FORMATS.items())
        }

    def next(self, channel: str) -> str:
        n = self._counters[channel]
        self._counters[channel] = n + 1
        offset, space, step, base = self._plans[channel]
        return str(base + ((n * self._MULTIPLIER + offset) % space) * step)


# --------------------------------------------------------------------------------------------
# Shared formatting
# --------------------------------------------------------------------------------------------


_YUAN_CACHE: dict[int, str] = {}


def yuan(fen: int) -> str:
    """``21900`` -> ``"219.00"``: Tmall and JD send money as yuan strings with two decimals.
    Memoized (bounded): catalog prices and common totals repeat endlessly in a sale."""
    text = _YUAN_CACHE.get(fen)
    if text is None:
        text = f"{fen // 100}.{fen % 100:02d}"
        if len(_YUAN_CACHE) < 65536:
            _YUAN_CACHE[fen] = text
    return text


@lru_cache(maxsize=8192)
def beijing_time(epoch: int) -> str:
    """Unix seconds -> ``"yyyy-MM-dd HH:mm:ss"`` Beijing wall clock (Tmall, JD).  Cached: a busy
    second formats once."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch + _BEIJING_OFFSET_S))


_ENC_CACHE: dict[tuple[int, int], str] = {}


def _enc(secret: int, salt: int) -> str:
    """A Douyin-style ciphertext placeholder ``#ENC#a1b2c3#`` (stable per buyer and field).
    Memoized (bounded): the simulator draws buyers from a fixed pool."""
    text = _ENC_CACHE.get((secret, salt))
    if text is None:
        text = f"#ENC#{(secret * 0x9E3779B1 + salt * 0x85EBCA6B) & 0xFFFFFF:06x}#"
        if len(_ENC_CACHE) < 65536:
            _ENC_CACHE[(secret, salt)] = text
    return text


@cache
def _channel_sku(channel: str, sku: str) -> tuple[str, str, str]:
    """The channel's own (product id, sku id, extra id) for a merchant SKU: stable per channel, so
    reconciliation with ``channel_sku_id`` sees one id per SKU."""
    h = zlib.crc32(f"{channel}:{sku}".encode())
    g = zlib.crc32(f"{sku}:{channel}".encode())
    if channel == "tmall":  # num_iid, sku_id
        return f"68{h % 10**10:010d}", f"50{g % 10**11:011d}", ""
    if channel == "jd":  # wareId, skuId
        return f"1000{h % 10**8:08d}", f"1000{g % 10**8:08d}", ""
    if channel == "douyin":  # product_id, sku_id
        return f"36000{h % 10**8:08d}", f"17800{g % 10**8:08d}", ""
    # wxmini: product_id, sku_id, out_product_id (merchant product code)
    return f"100001{h % 10**8:08d}", f"20{g % 10**8:08d}", "P-" + sku.removeprefix("SKU-").rsplit("-", 1)[0]


@lru_cache(maxsize=4096)
def _line_head(channel: str, sku: str, name: str) -> dict[str, Any]:
    """The fields of a line that depend on the SKU only, in the channel's field order (built once
    per SKU: payload building is the simulator's hot loop)."""
    product_id, sku_id, extra = _channel_sku(channel, sku)
    if channel == "tmall":
        return {"num_iid": int(product_id), "sku_id": sku_id, "outer_sku_id": sku, "title": name}
    if channel == "jd":
        return {"skuId": sku_id, "outerSkuId": sku, "wareId": product_id, "skuName": name}
    if channel == "douyin":
        return {"product_id": product_id, "sku_id": int(sku_id), "out_sku_id": "", "code": sku,
                "product_name": name}
    return {"product_id": product_id, "sku_id": sku_id, "out_product_id": extra, "out_sku_id": sku,
            "title": name}


def _dumps(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


# --------------------------------------------------------------------------------------------
# Tmall: taobao.trade.fullinfo.get
# --------------------------------------------------------------------------------------------

_TMALL_STATUS = {PENDING: "WAIT_BUYER_PAY", PAID: "WAIT_SELLER_SEND_GOODS"}


def tmall_payload(o: SimOrder) -> bytes:
    """Yuan strings, Beijing times, ``tid`` above 2^53 with ``tid_str``; unset fields are absent
    (TOP omits them), so an unpaid trade has no ``pay_time``.  Line ``oid`` is ``tid + n``."""
    if o.status == CANCELLED:
        # A paid trade the buyer cancelled is refunded and closed; an unpaid one is closed by Taobao.
        status = "TRADE_CLOSED" if o.paid is not None else "TRADE_CLOSED_BY_TAOBAO"
        refund = "SUCCESS" if o.paid is not None else "NO_REFUND"
    else:
        status, refund = _TMALL_STATUS[o.status], "NO_REFUND"
    tid = int(o.channel_order_id)
    a = o.address
    p = a.province
    lines = []
    goods = paid = 0
    for i, line in enumerate(o.lines, 1):
        total = line.unit_price_fen * line.qty
        goods += total
        paid += line.paid_fen
        lines.append({
            "oid": tid + i, **_line_head("tmall", line.sku, line.name), "num": line.qty,
            "price": yuan(line.unit_price_fen), "total_fee": yuan(total), "payment": yuan(line.paid_fen),
            "refund_status": refund, "status": status,
        })
    trade: dict[str, Any] = {
        "tid": tid, "tid_str": o.channel_order_id, "status": status, "type": "fixed",
        "created": beijing_time(o.created),
    }
    if o.paid is not None:
        trade["pay_time"] = beijing_time(o.paid)
    trade["modified"] = beijing_time(o.updated)
    trade["total_fee"] = yuan(goods)
    trade["discount_fee"] = yuan(goods - paid)
    trade["post_fee"] = yuan(o.freight_fen)
    trade["payment"] = yuan(paid + o.freight_fen)
    trade["buyer_nick"] = o.buyer.nick
    trade["buyer_message"] = o.buyer_note
    if o.merchant_note:
        trade["seller_memo"] = o.merchant_note
    trade["receiver_name"] = o.buyer.name
    trade["receiver_state"] = p.short if p.code in MUNICIPALITIES else p.name
    trade["receiver_city"] = a.city
    trade["receiver_district"] = a.district
    trade["receiver_address"] = f"{a.road}***号"
    trade["receiver_mobile"] = o.buyer.mobile
    trade["receiver_zip"] = a.zip_code
    trade["orders"] = {"order": lines}
    return _dumps({"trade_fullinfo_get_response": {"trade": trade}})


# --------------------------------------------------------------------------------------------
# JD: jingdong.pop.order.search, one element of orderInfoList
# --------------------------------------------------------------------------------------------


def jd_payload(o: SimOrder) -> bytes:
    """Yuan strings, Beijing times, ``itemTotal`` as a string, short province names, no per-line
    paid amounts (JD gives the discount at order level only).  JD has no unpaid state of its own:
    an unpaid order waits in WAIT_SELLER_STOCK_OUT with the ``0001-01-01 00:00:00`` payment time.
    In the four municipalities JD's address levels shift up one (``city`` is the district,
    ``county`` the street), as in the sample."""
    state = "TRADE_CANCELED" if o.status == CANCELLED else "WAIT_SELLER_STOCK_OUT"
    a = o.address
    p = a.province
    if p.code in MUNICIPALITIES:
        city, county = a.district, a.street
    else:
        city, county = a.city, a.district
    items = []
    goods = paid = 0
    for line in o.lines:
        goods += line.unit_price_fen * line.qty
        paid += line.paid_fen
        items.append({**_line_head("jd", line.sku, line.name), "jdPrice": yuan(line.unit_price_fen),
                      "itemTotal": str(line.qty)})
    return _dumps({
        "orderId": o.channel_order_id, "venderId": "10086", "orderType": "22", "orderState": state,
        "orderStartTime": beijing_time(o.created),
        "paymentConfirmTime": JD_UNPAID_TIME if o.paid is None else beijing_time(o.paid),
        "modified": beijing_time(o.updated),
        "orderTotalPrice": yuan(goods), "sellerDiscount": yuan(goods - paid),
        "freightPrice": yuan(o.freight_fen), "orderPayment": yuan(paid + o.freight_fen),
        "orderRemark": o.buyer_note, "venderRemark": o.merchant_note,
        "consigneeInfo": {
            "fullname": o.buyer.name, "mobile": o.buyer.mobile, "province": p.short,
            "provinceId": JD_PROVINCE_IDS.get(p.code, "0"), "city": city, "county": county,
            "fullAddress": f"{p.short}{city}{county}***",
        },
        "itemInfoList": items,
    })


# --------------------------------------------------------------------------------------------
# Douyin: order.orderDetail
# --------------------------------------------------------------------------------------------

_DOUYIN_STATUS = {PENDING: (1, "待支付"), PAID: (2, "备货中"), CANCELLED: (4, "已取消")}


def douyin_payload(o: SimOrder) -> bytes:
    """Integer fen, Unix seconds (``pay_time`` 0 while unpaid), one sub-order per line with ids
    ``order_id + n``; free gifts are lines with ``given_product_type`` FREE and price 0."""
    code, desc = _DOUYIN_STATUS[o.status]
    oid = o.channel_order_id
    base = int(oid)
    a = o.address
    p = a.province
    lines = []
    goods = paid = 0
    stock = o.reduce_stock_type
    for i, line in enumerate(o.lines, 1):
        total = line.unit_price_fen * line.qty
        goods += total
        paid += line.paid_fen
        lines.append({
            "order_id": str(base + i), "parent_order_id": oid,
            **_line_head("douyin", line.sku, line.name),
            "item_num": line.qty, "goods_price": line.unit_price_fen, "order_amount": total,
            "pay_amount": line.paid_fen, "given_product_type": "FREE" if line.gift else "",
            "reduce_stock_type": stock,
        })
    s = o.buyer.secret
    return _dumps({"code": 10000, "msg": "success", "data": {"shop_order_detail": {
        "order_id": oid, "order_status": code, "order_status_desc": desc,
        "create_time": o.created, "pay_time": 0 if o.paid is None else o.paid,
        "update_time": o.updated, "order_expire_time": o.expire_s,
        "order_amount": goods, "pay_amount": paid + o.freight_fen, "post_amount": o.freight_fen,
        "buyer_words": o.buyer_note, "seller_words": o.merchant_note,
        "post_addr": {
            "province": {"name": p.name, "id": p.code},
            "city": {"name": a.city, "id": a.city_code},
            "town": {"name": a.district, "id": a.district_code},
            "street": {"name": a.street, "id": a.district_code + "001"},
            "encrypt_detail": _enc(s, 1),
        },
        "encrypt_post_receiver": _enc(s, 2), "encrypt_post_tel": _enc(s, 3),
        "sku_order_list": lines,
    }}})


# --------------------------------------------------------------------------------------------
# WeChat shop (微信小店): ec/order/get
# --------------------------------------------------------------------------------------------

_WXMINI_STATUS = {PENDING: 10, PAID: 20, CANCELLED: 250}


def wxmini_payload(o: SimOrder) -> bytes:
    """Integer fen, Unix seconds; ``real_price`` is the line's paid amount; ``pay_time`` 0 and no
    transaction id while unpaid."""
    a = o.address
    products = []
    goods = paid = 0
    for line in o.lines:
        goods += line.unit_price_fen * line.qty
        paid += line.paid_fen
        products.append({**_line_head("wxmini", line.sku, line.name), "sku_cnt": line.qty,
                         "sale_price": line.unit_price_fen, "real_price": line.paid_fen})
    if o.paid is None:
        pay_info: dict[str, Any] = {"pay_time": 0}
    else:
        day = beijing_time(o.paid)
        pay_info = {"pay_time": o.paid,
                    "transaction_id": f"4200{o.buyer.secret % 1000000:06d}{day[0:4]}{day[5:7]}{day[8:10]}"
                                      f"{int(o.channel_order_id) % 10**10:010d}"}
    return _dumps({"errcode": 0, "errmsg": "ok", "order": {
        "order_id": o.channel_order_id, "status": _WXMINI_STATUS[o.status],
        "create_time": o.created, "update_time": o.updated,
        "order_detail": {
            "product_infos": products,
            "price_info": {
                "product_price": goods, "order_price": paid + o.freight_fen,
                "freight": o.freight_fen, "discounted_price": goods - paid,
            },
            "pay_info": pay_info,
            "delivery_info": {"address_info": {
                "user_name": o.buyer.name, "postal_code": a.zip_code,
                "province_name": a.province.name, "city_name": a.city, "county_name": a.district,
                "detail_info": f"{a.road}***号", "tel_number": o.buyer.mobile,
            }},
            "ext_info": {"customer_notes": o.buyer_note, "merchant_notes": o.merchant_note},
        },
    }})


PAYLOAD_BUILDERS: dict[str, Callable[[SimOrder], bytes]] = {
    "tmall": tmall_payload,
    "jd": jd_payload,
    "douyin": douyin_payload,
    "wxmini": wxmini_payload,
}


def build_payload(order: SimOrder) -> bytes:
    """The raw payload (UTF-8 JSON bytes) ``order.channel`` would send for the order's current state."""
    return PAYLOAD_BUILDERS[order.channel](order)
