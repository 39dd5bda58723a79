"""Normalization of the sales channels' raw order payloads into the canonical order.

Public API (imported by the agents, the CLI and the webhook): :func:`normalize`,
:func:`channel_order_id` and :data:`PARSERS`.  Everything here is pure: bytes and a catalog in, a
:class:`CanonicalOrder` out, or a :class:`Rejection` naming the field at fault as a path in the
*raw* payload (``trade_fullinfo_get_response.trade.orders.order[1].num``; ``$`` is the whole
document).  No other exception escapes :func:`normalize`, whatever the input.

Rules the channel spec leaves open, decided here:

* Absent or null required field: ``missing_field``.  An empty or blank string is "absent" for text
  (ids, SKU codes, status, province) and for times; for quantities and amounts it is a bad value
  (``bad_quantity``/``bad_money``).
* Quantities, amounts, times and statuses of the wrong JSON type get their own code
  (``bad_quantity``, ``bad_money``, ``bad_timestamp``, ``bad_status``), which tells operations more
  than ``wrong_type``; ``wrong_type`` is for objects, arrays and text fields.
* Quantities are accepted as JSON integers or ASCII digit strings in every channel (both are exact;
  JD documents strings), 1 to :data:`MAX_QTY`.
* Ids (order, line, channel SKU) are accepted as strings or non-negative integers, kept as strings.
* SKU codes are stripped of surrounding whitespace before the catalog lookup (merchants type them).
* City and district are optional (``""`` when absent): routing needs only the province.
* Notes are optional (``""``).  Names, phones and street addresses are never copied.
* A paid-like status (paid, on_hold, shipped, completed) without a pay time is ``missing_field`` on
  the pay-time field, except on JD, where ``WAIT_SELLER_STOCK_OUT`` without a pay time means the
  order is not paid yet (``pending_payment``) and other JD statuses keep ``paid_at`` null
  (cash-on-delivery orders are paid at the door).  An unpaid status drops any pay time.
* ``updated_at`` is the channel's modification time, or the later of created/paid when absent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from .canonical import CanonicalOrder, Notes, OrderLine, Rejection, ShipTo
from .catalog import Catalog
from .money import allocate, fen, json_kind, yuan_to_fen
from .provinces import lookup_province
from .timeparse import (
    beijing_to_epoch,
    check_paid_after_created,
    iso_utc,
    unix_to_epoch,
)

Json = dict[str, Any]

#: Largest quantity on one line.  Bigger is a typo or garbage, and it bounds the digits parsed.
MAX_QTY = 1_000_000
_MAX_QTY_DIGITS = 7

_PAID_LIKE = frozenset({"paid", "on_hold", "shipped", "completed"})
_URGENT_WORDS = ("加急", "急件", "特急")

TMALL_STATUS: dict[str, str] = {
    "WAIT_BUYER_PAY": "pending_payment",
    "TRADE_NO_CREATE_PAY": "pending_payment",
    "WAIT_SELLER_SEND_GOODS": "paid",
    "PAID_FORBID_CONSIGN": "on_hold",
    "SELLER_CONSIGNED_PART": "shipped",
    "WAIT_BUYER_CONFIRM_GOODS": "shipped",
    "TRADE_FINISHED": "completed",
    "TRADE_CLOSED": "cancelled",
    "TRADE_CLOSED_BY_TAOBAO": "cancelled",
}
JD_STATUS: dict[str, str] = {
    "WAIT_SELLER_STOCK_OUT": "paid",
    "WAIT_GOODS_RECEIVE_CONFIRM": "shipped",
    "FINISHED_L": "completed",
    "TRADE_CANCELED": "cancelled",
    "LOCKED": "on_hold",
    "PAUSE": "on_hold",
}
DOUYIN_STATUS: dict[int, str] = {
    1: "pending_payment", 105: "on_hold", 2: "paid", 101: "shipped", 3: "shipped", 4: "cancelled",
    5: "completed",
}
WXMINI_STATUS: dict[int, str] = {
    10: "pending_payment", 20: "paid", 21: "shipped", 30: "shipped", 100: "completed", 250: "cancelled",
}
DOUYIN_SUCCESS = 10000


# --------------------------------------------------------------------------- public API


def normalize(channel: str, raw: bytes | str, catalog: Catalog) -> CanonicalOrder:
    """The canonical order in ``raw``, a payload of ``channel``; raises :class:`Rejection`.

    The channel is checked before the payload is decoded: an unknown channel is a wiring error
    whatever the bytes hold, and it costs no parse.
    """
    parser = PARSERS.get(channel) if type(channel) is str else None
    if parser is None:
        known = ", ".join(PARSERS)
        raise Rejection("unknown_channel", "channel", f"unknown channel {channel!r:.40}; known: {known}")
    return parser(_decode(raw), catalog)


def channel_order_id(channel: str, raw: bytes) -> str | None:
    """The channel's order id in ``raw`` (keys the raw topics), or ``None``; never raises.

    It applies the same id rules as :func:`normalize`, so a payload that normalizes has the key its
    canonical ``channel_order_id`` shows; the rest of the payload is not validated.
    """
    try:
        extract = _ORDER_ID_EXTRACTORS.get(channel) if type(channel) is str else None
        if extract is None:
            return None
        doc = orjson.loads(raw)
        return extract(doc) if type(doc) is dict else None
    except Exception:  # a key extractor on the ingest path must be total: garbage gets no key
        return None


def is_urgent(*notes: str) -> bool:
    """Whether a note asks for rushed handling: 加急, 急件, 特急 or "urgent" (any case).

    Boilerplate such as 尽快发货 ("ship soon") is not urgent.  Negations (不加急) are not understood.
    """
    for text in notes:
        if text and (any(word in text for word in _URGENT_WORDS) or "urgent" in text.lower()):
            return True
    return False


# --------------------------------------------------------------------------- tmall


def parse_tmall(doc: Json, catalog: Catalog) -> CanonicalOrder:
    """Tmall/Taobao ``taobao.trade.fullinfo.get`` response.

    A TOP error reply (``error_response``) is ``channel_error``.  The order id is ``tid_str``
    (``tid`` exceeds 2^53 and is only used, as an exact integer, when ``tid_str`` is absent).
    Items sold without SKU variants carry no ``outer_sku_id``/``sku_id`` on TOP; their merchant
    code is ``outer_iid`` and their channel id ``num_iid``, used as fallbacks.
    """
    if "error_response" in doc:
        raise Rejection("channel_error", "error_response", f"TOP error: {_brief(doc['error_response'])}")
    base = "trade_fullinfo_get_response.trade"
    trade = _obj(_obj(doc, "trade_fullinfo_get_response", ""), "trade", "trade_fullinfo_get_response")
    order_id = _tmall_tid(trade, base)
    status = _status(trade, "status", base, TMALL_STATUS)
    created = beijing_to_epoch(trade.get("created"), f"{base}.created")
    pay_field = f"{base}.pay_time"
    pay_time = beijing_to_epoch(trade.get("pay_time"), pay_field, optional=True)
    paid = _settle_payment(status, created, pay_time, pay_field)
    updated = beijing_to_epoch(trade.get("modified"), f"{base}.modified", optional=True)
    payment = _yuan(trade, "payment", base)
    freight = _opt_yuan(trade, "post_fee", base)
    orders_base = f"{base}.orders"
    items = _lines(_obj(trade, "orders", base), "order", orders_base)
    lines = [_tmall_line(item, f"{orders_base}.order[{i}]", catalog) for i, item in enumerate(items)]
    ship_to = _ship_to(
        trade, "receiver_state", base, _opt_text(trade, "receiver_city", base),
        _opt_text(trade, "receiver_district", base),
    )
    notes = Notes(_opt_text(trade, "buyer_message", base), _opt_text(trade, "seller_memo", base))
    return _order("tmall", order_id, status, created, paid, updated, payment, freight, lines, ship_to, notes)


def _first_set(item: Json, key: str, fallback: str) -> str:
    """``key`` unless it is unset and ``fallback`` is set (errors then name ``key``)."""
    return fallback if item.get(key) in (None, "") and item.get(fallback) not in (None, "") else key


def _tmall_tid(trade: Json, base: str) -> str:
    """``tid_str``, else the exact integer ``tid`` (a float here means it was already rounded)."""
    if trade.get("tid_str") not in (None, ""):
        return _ident(trade, "tid_str", base)
    tid = trade.get("tid")
    if type(tid) is int and tid > 0:
        return str(tid)
    if tid is None:
        raise Rejection("missing_field", f"{base}.tid_str", "no tid_str and no tid")
    raise Rejection("wrong_type", f"{base}.tid", f"tid must be an exact integer, got {json_kind(tid)}")


def _tmall_line(item: object, path: str, catalog: Catalog) -> OrderLine:
    item = _item(item, path)
    line_id = _ident(item, _first_set(item, "oid_str", "oid"), path)
    sku_key = _first_set(item, "outer_sku_id", "outer_iid")
    id_key = _first_set(item, "sku_id", "num_iid")
    return _line(
        catalog, line_id, item, sku_key, path, _ident(item, id_key, path), _qty(item, "num", path),
        _yuan(item, "price", path), _yuan(item, "payment", path),
    )


# --------------------------------------------------------------------------- jd


def parse_jd(doc: Json, catalog: Catalog) -> CanonicalOrder:
    """One JD ``orderInfoList`` element (no wrapper).

    JD gives no per-line paid amount: ``orderPayment - freightPrice`` is spread over the lines by
    ``jdPrice x itemTotal`` (largest remainder, exact to the fen).  JD has no sub-order id, so the
    line id is ``skuId``, or ``skuId-n`` (n = 1, 2, ... in payload order) for every line of a
    ``skuId`` that appears more than once.  ``consigneeInfo.provinceId`` is JD's own numbering,
    not GB/T 2260, and is ignored.
    """
    order_id = _ident(doc, "orderId", "")
    status = _status(doc, "orderState", "", JD_STATUS)
    created = beijing_to_epoch(doc.get("orderStartTime"), "orderStartTime")
    paid = beijing_to_epoch(doc.get("paymentConfirmTime"), "paymentConfirmTime", optional=True)
    if paid is None and status == "paid":
        status = "pending_payment"
    check_paid_after_created(created, paid, "paymentConfirmTime")
    if status == "pending_payment":
        paid = None
    updated = beijing_to_epoch(doc.get("modified"), "modified", optional=True)
    payment = _yuan(doc, "orderPayment", "")
    freight = _opt_yuan(doc, "freightPrice", "")
    if freight > payment:
        raise Rejection("bad_money", "orderPayment", f"{payment} fen is less than freightPrice, {freight} fen")
    items = _lines(doc, "itemInfoList", "")
    rows = []
    for i, item in enumerate(items):
        path = f"itemInfoList[{i}]"
        item = _item(item, path)
        qty, price = _qty(item, "itemTotal", path), _yuan(item, "jdPrice", path)
        rows.append((item, path, _ident(item, "skuId", path), qty, price))
    paid_shares = allocate(payment - freight, [qty * price for _, _, _, qty, price in rows])
    repeats = Counter(row[2] for row in rows)
    seen: dict[str, int] = {}
    lines = []
    for (item, path, sku_id, qty, price), share in zip(rows, paid_shares, strict=True):
        line_id = sku_id
        if repeats[sku_id] > 1:
            seen[sku_id] = seen.get(sku_id, 0) + 1
            line_id = f"{sku_id}-{seen[sku_id]}"
        lines.append(_line(catalog, line_id, item, "outerSkuId", path, sku_id, qty, price, share))
    consignee = _obj(doc, "consigneeInfo", "")
    ship_to = _ship_to(
        consignee, "province", "consigneeInfo", _opt_text(consignee, "city", "consigneeInfo"),
        _opt_text(consignee, "county", "consigneeInfo"),
    )
    notes = Notes(_opt_text(doc, "orderRemark", ""), _opt_text(doc, "venderRemark", ""))
    return _order("jd", order_id, status, created, paid, updated, payment, freight, lines, ship_to, notes)


# --------------------------------------------------------------------------- douyin


def parse_douyin(doc: Json, catalog: Catalog) -> CanonicalOrder:
    """Douyin shop ``order.orderDetail`` response (``code`` must be 10000).

    The merchant SKU is ``out_sku_id`` when set, else ``code`` (no fallback when ``out_sku_id`` is
    set but unknown: that would hide a catalog gap).  A ``given_product_type`` ``"FREE"`` line is a
    gift and must be paid 0 (``bad_money`` otherwise).  ``expires_at`` is ``create_time +
    order_expire_time`` for unpaid orders only (null when the TTL is absent or 0; validated only
    then).  ``reserve_on`` is ``"order"`` when a line has ``reduce_stock_type`` 1; any other value
    (2, absent, garbage) means ``"payment"``: it is a hint, not worth refusing an order for.
    """
    _check_code(doc, "code", DOUYIN_SUCCESS, "msg", missing_ok=False)
    base = "data.shop_order_detail"
    detail = _obj(_obj(doc, "data", ""), "shop_order_detail", "data")
    order_id = _ident(detail, "order_id", base)
    status = _status(detail, "order_status", base, DOUYIN_STATUS)
    created = unix_to_epoch(detail.get("create_time"), f"{base}.create_time")
    pay_field = f"{base}.pay_time"
    pay_time = unix_to_epoch(detail.get("pay_time"), pay_field, optional=True)
    paid = _settle_payment(status, created, pay_time, pay_field)
    updated = unix_to_epoch(detail.get("update_time"), f"{base}.update_time", optional=True)
    expires = None
    if status == "pending_payment":
        ttl_field = f"{base}.order_expire_time"
        ttl = detail.get("order_expire_time")
        if ttl is not None and ttl != 0:
            if type(ttl) is not int or ttl < 0:
                detail_text = f"expected non-negative integer seconds, got {json_kind(ttl)}"
                raise Rejection("bad_timestamp", ttl_field, detail_text)
            expires = unix_to_epoch(created + ttl, ttl_field)
    payment = _fen(detail, "pay_amount", base)
    freight = _opt_fen(detail, "post_amount", base)
    lines_base = f"{base}.sku_order_list"
    items = _lines(detail, "sku_order_list", base)
    lines = []
    reserve_on = "payment"
    for i, item in enumerate(items):
        path = f"{lines_base}[{i}]"
        item = _item(item, path)
        gift = _opt_text(item, "given_product_type", path) == "FREE"
        paid_fen = _fen(item, "pay_amount", path)
        if gift and paid_fen:
            raise Rejection("bad_money", f"{path}.pay_amount", f"a free gift line cannot be paid for ({paid_fen} fen)")
        sku_key = "out_sku_id" if _opt_text(item, "out_sku_id", path).strip() else "code"
        lines.append(_line(
            catalog, _ident(item, "order_id", path), item, sku_key, path, _ident(item, "sku_id", path),
            _qty(item, "item_num", path), _fen(item, "goods_price", path), paid_fen, gift,
        ))
        rst = item.get("reduce_stock_type")
        if rst == 1 and type(rst) is int:
            reserve_on = "order"
    addr_base = f"{base}.post_addr"
    addr = _obj(detail, "post_addr", base)
    ship_to = _ship_to(
        _obj(addr, "province", addr_base), "name", f"{addr_base}.province",
        _opt_name(addr, "city", addr_base), _opt_name(addr, "town", addr_base),
    )
    notes = Notes(_opt_text(detail, "buyer_words", base), _opt_text(detail, "seller_words", base))
    return _order(
        "douyin", order_id, status, created, paid, updated, payment, freight, lines, ship_to, notes,
        expires=expires, reserve_on=reserve_on,
    )


def _opt_name(addr: Json, key: str, base: str) -> str:
    """``addr[key].name`` of a Douyin address level, ``""`` when the level is absent."""
    level = _opt_obj(addr, key, base)
    return "" if level is None else _opt_text(level, "name", f"{base}.{key}")


# --------------------------------------------------------------------------- wxmini


def parse_wxmini(doc: Json, catalog: Catalog) -> CanonicalOrder:
    """WeChat shop ``ec/order/get`` response (``errcode`` 0, or absent as WeChat does on success).

    Lines have no id of their own: the line id is the 1-based position in ``product_infos``.
    """
    _check_code(doc, "errcode", 0, "errmsg", missing_ok=True)
    order = _obj(doc, "order", "")
    order_id = _ident(order, "order_id", "order")
    status = _status(order, "status", "order", WXMINI_STATUS)
    created = unix_to_epoch(order.get("create_time"), "order.create_time")
    dbase = "order.order_detail"
    detail = _obj(order, "order_detail", "order")
    pay_info = _opt_obj(detail, "pay_info", dbase)
    pay_field = f"{dbase}.pay_info.pay_time"
    pay_time = unix_to_epoch(None if pay_info is None else pay_info.get("pay_time"), pay_field, optional=True)
    paid = _settle_payment(status, created, pay_time, pay_field)
    updated = unix_to_epoch(order.get("update_time"), "order.update_time", optional=True)
    pbase = f"{dbase}.price_info"
    price_info = _obj(detail, "price_info", dbase)
    payment = _fen(price_info, "order_price", pbase)
    freight = _opt_fen(price_info, "freight", pbase)
    lines_base = f"{dbase}.product_infos"
    lines = []
    for i, item in enumerate(_lines(detail, "product_infos", dbase)):
        path = f"{lines_base}[{i}]"
        item = _item(item, path)
        lines.append(_line(
            catalog, str(i + 1), item, "out_sku_id", path, _ident(item, "sku_id", path),
            _qty(item, "sku_cnt", path), _fen(item, "sale_price", path), _fen(item, "real_price", path),
        ))
    abase = f"{dbase}.delivery_info.address_info"
    addr = _obj(_obj(detail, "delivery_info", dbase), "address_info", f"{dbase}.delivery_info")
    ship_to = _ship_to(
        addr, "province_name", abase, _opt_text(addr, "city_name", abase), _opt_text(addr, "county_name", abase),
    )
    ext = _opt_obj(detail, "ext_info", dbase) or {}
    ebase = f"{dbase}.ext_info"
    notes = Notes(_opt_text(ext, "customer_notes", ebase), _opt_text(ext, "merchant_notes", ebase))
    return _order("wxmini", order_id, status, created, paid, updated, payment, freight, lines, ship_to, notes)


PARSERS: dict[str, Callable[[Json, Catalog], CanonicalOrder]] = {
    "tmall": parse_tmall,
    "jd": parse_jd,
    "douyin": parse_douyin,
    "wxmini": parse_wxmini,
}

_ORDER_ID_EXTRACTORS: dict[str, Callable[[Json], str]] = {
    "tmall": lambda d: _tmall_tid(
        _obj(_obj(d, "trade_fullinfo_get_response", ""), "trade", ""), "trade_fullinfo_get_response.trade"
    ),
    "jd": lambda d: _ident(d, "orderId", ""),
    "douyin": lambda d: _ident(_obj(_obj(d, "data", ""), "shop_order_detail", ""), "order_id", ""),
    "wxmini": lambda d: _ident(_obj(d, "order", ""), "order_id", ""),
}


# --------------------------------------------------------------------------- shared steps


def _decode(raw: object) -> Json:
    """The payload as a JSON object, or ``malformed_json`` at ``$``."""
    try:
        doc = orjson.loads(raw)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise Rejection("malformed_json", "$", f"not valid UTF-8 JSON: {exc}") from None
    if type(doc) is not dict:
        raise Rejection("malformed_json", "$", f"top level must be an object, got {json_kind(doc)}")
    return doc


def _check_code(doc: Json, key: str, success: int, msg_key: str, *, missing_ok: bool) -> None:
    """Refuse a response wrapper whose result code is not ``success`` (``channel_error``)."""
    code = doc.get(key)
    if type(code) is int and code == success:
        return
    if code is None:
        if missing_ok:
            return
        raise Rejection("missing_field", key, f"no {key} in the response wrapper")
    if type(code) is not int:
        raise Rejection("wrong_type", key, f"expected an integer, got {json_kind(code)}")
    raise Rejection("channel_error", key, f"{key} {code}: {_brief(doc.get(msg_key))}")


def _settle_payment(status: str, created: int, paid: int | None, pay_field: str) -> int | None:
    """The pay time the order keeps under the common (non-JD) rule; see the module docstring."""
    check_paid_after_created(created, paid, pay_field)
    if status == "pending_payment":
        return None
    if paid is None and status in _PAID_LIKE:
        raise Rejection("missing_field", pay_field, f"status {status} requires a pay time")
    return paid


def _order(
    channel: str, order_id: str, status: str, created: int, paid: int | None, updated: int | None,
    payment: int, freight: int, lines: list[OrderLine], ship_to: ShipTo, notes: Notes, *,
    expires: int | None = None, reserve_on: str = "payment",
) -> CanonicalOrder:
    if updated is None:
        updated = created if paid is None or paid < created else paid
    return CanonicalOrder(
        order_id=f"{channel}:{order_id}", channel=channel, channel_order_id=order_id, status=status,
        created_at=iso_utc(created), paid_at=None if paid is None else iso_utc(paid),
        payment_fen=payment, freight_fen=freight, lines=tuple(lines), ship_to=ship_to, notes=notes,
        urgent=is_urgent(notes.buyer, notes.merchant), updated_at=iso_utc(updated),
        expires_at=None if expires is None else iso_utc(expires), reserve_on=reserve_on,
    )


def _line(
    catalog: Catalog, line_id: str, item: Json, sku_key: str, path: str, channel_sku_id: str, qty: int,
    unit_price: int, paid: int, gift: bool = False,
) -> OrderLine:
    """An order line whose SKU (``item[sku_key]``) is in the catalog; catalog gifts are gifts."""
    sku = _text(item, sku_key, path).strip()
    known = catalog.get(sku)
    if known is None:
        raise Rejection("unknown_sku", f"{path}.{sku_key}", f"SKU {sku!r:.60} is not in the catalog")
    return OrderLine(line_id, sku, channel_sku_id, qty, unit_price, paid, gift or known.gift)


def _ship_to(holder: Json, key: str, base: str, city: str, district: str) -> ShipTo:
    """Where the order goes, by official province name and code; no names, phones or streets."""
    name = _text(holder, key, base)
    province = lookup_province(name)
    if province is None:
        raise Rejection("bad_province", _at(base, key), f"{name!r:.40} names no provincial-level division")
    return ShipTo(province.name, province.code, city.strip(), district.strip())


def _status(d: Json, key: str, base: str, table: dict[Any, str]) -> str:
    """The canonical status for a channel's code; a code of another JSON type is unknown too."""
    value = d.get(key)
    if value is None or value == "":
        raise Rejection("missing_field", _at(base, key), "required status is missing")
    status = table.get(value) if type(value) in (str, int) else None
    if status is None:
        raise Rejection("bad_status", _at(base, key), f"status {value!r:.40} is not one the channel defines")
    return status


# --------------------------------------------------------------------------- field readers
# ``base`` is the path of the object read from ("" for the top level); paths are built eagerly only
# where the value needs a validator that takes one, and otherwise only on the way to a rejection.


def _at(base: str, key: str) -> str:
    return f"{base}.{key}" if base else key


def _missing_or_wrong(value: object, path: str, expected: str) -> Rejection:
    if value is None:
        return Rejection("missing_field", path, f"required field is missing or empty (expected {expected})")
    return Rejection("wrong_type", path, f"expected {expected}, got {json_kind(value)}")


def _obj(d: Json, key: str, base: str) -> Json:
    value = d.get(key)
    if type(value) is dict:
        return value
    raise _missing_or_wrong(value, _at(base, key), "an object")


def _opt_obj(d: Json, key: str, base: str) -> Json | None:
    value = d.get(key)
    if value is None or type(value) is dict:
        return value
    raise Rejection("wrong_type", _at(base, key), f"expected an object, got {json_kind(value)}")


def _item(value: object, path: str) -> Json:
    if type(value) is dict:
        return value
    raise _missing_or_wrong(value, path, "an object")


def _lines(d: Json, key: str, base: str) -> list[Any]:
    value = d.get(key)
    if type(value) is list:
        if value:
            return value
        raise Rejection("missing_field", _at(base, key), "an order needs at least one line")
    raise _missing_or_wrong(value, _at(base, key), "an array")


def _text(d: Json, key: str, base: str) -> str:
    value = d.get(key)
    if type(value) is str and value and not value.isspace():
        return value
    if type(value) is str:
        value = None
    raise _missing_or_wrong(value, _at(base, key), "a string")


def _opt_text(d: Json, key: str, base: str) -> str:
    value = d.get(key)
    if type(value) is str:
        return value
    if value is None:
        return ""
    raise Rejection("wrong_type", _at(base, key), f"expected a string, got {json_kind(value)}")


def _ident(d: Json, key: str, base: str) -> str:
    value = d.get(key)
    if type(value) is str:
        if value and not value.isspace():
            return value
        raise Rejection("missing_field", _at(base, key), "required id is empty")
    if type(value) is int and value >= 0:
        return str(value)
    if value is None:
        raise Rejection("missing_field", _at(base, key), "required id is missing")
    raise Rejection("wrong_type", _at(base, key), f"expected a string or integer id, got {json_kind(value)}")


def _qty(d: Json, key: str, base: str) -> int:
    value = d.get(key)
    if type(value) is int:
        qty = value
    elif type(value) is str and 0 < len(value) <= _MAX_QTY_DIGITS and value.isascii() and value.isdigit():
        qty = int(value)
    elif value is None:
        raise Rejection("missing_field", _at(base, key), "required quantity is missing")
    else:
        raise Rejection("bad_quantity", _at(base, key), f"quantity must be a positive integer, got {_shown(value)}")
    if 0 < qty <= MAX_QTY:
        return qty
    raise Rejection("bad_quantity", _at(base, key), f"quantity must be 1..{MAX_QTY}, got {qty}")


def _yuan(d: Json, key: str, base: str) -> int:
    value = d.get(key)
    if value is None:
        raise Rejection("missing_field", _at(base, key), "required amount is missing")
    return yuan_to_fen(value, _at(base, key))


def _opt_yuan(d: Json, key: str, base: str) -> int:
    """An amount that is 0 when absent (freight)."""
    value = d.get(key)
    return 0 if value is None else yuan_to_fen(value, _at(base, key))


def _fen(d: Json, key: str, base: str) -> int:
    value = d.get(key)
    if value is None:
        raise Rejection("missing_field", _at(base, key), "required amount is missing")
    return fen(value, _at(base, key))


def _opt_fen(d: Json, key: str, base: str) -> int:
    """An amount that is 0 when absent (freight)."""
    value = d.get(key)
    return 0 if value is None else fen(value, _at(base, key))


def _shown(value: object) -> str:
    """A string value quoted (truncated), any other value by its JSON type."""
    return f"{value!r:.40}" if type(value) is str else json_kind(value)


def _brief(value: object) -> str:
    """A short printable form of a channel's error message for rejection details."""
    return f"{value!r:.120}"
