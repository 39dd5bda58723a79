"""The canonical order: the one shape every channel payload is normalized into.

Field names are a public contract (``../shared/channel-samples/README.md`` and README.md, section
*Public contract*): WMS consumers, ops tooling and tests read them.  Add fields, never rename.
Money is integer fen, times are ISO-8601 UTC ending in ``Z``, provinces are canonical names with
their GB/T 2260 code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

OrderStatus = Literal["pending_payment", "paid", "on_hold", "cancelled", "shipped", "completed"]
STATUSES: tuple[str, ...] = ("pending_payment", "paid", "on_hold", "cancelled", "shipped", "completed")
#: Statuses after which a channel never moves an order back (used to order re-sends).
TERMINAL_STATUSES = frozenset({"cancelled", "completed"})

REJECTION_CODES: tuple[str, ...] = (
    "malformed_json",   # not JSON, not UTF-8, or not an object where one is expected
    "unknown_channel",  # channel key is not one of tmall, jd, douyin, wxmini
    "missing_field",    # a required field is absent, null or empty
    "wrong_type",       # a field has the wrong JSON type (e.g. a list where an object belongs)
    "bad_quantity",     # quantity not a positive integer
    "bad_money",        # money not a non-negative amount (yuan string with <= 2 decimals, or int fen)
    "unknown_sku",      # merchant SKU code not in the catalog
    "bad_timestamp",    # unparseable or impossible time (before 2009, after 2100, paid before created)
    "bad_status",       # a status code the channel does not define
    "bad_province",     # ship-to province names no Chinese provincial-level division
    "channel_error",    # the channel's response wrapper reports an error (code/errcode != success)
)
#: Extra codes for inventory messages (peakroute.inventory); the others above apply too.
INVENTORY_REJECTION_CODES: tuple[str, ...] = (
    "unknown_warehouse",  # warehouse code not in the network
    "bad_type",           # unknown inventory message type
)


class Rejection(Exception):
    """A payload that cannot become a canonical order.  ``field`` is the path in the raw payload."""

    def __init__(self, code: str, field: str | None, detail: str) -> None:
        super().__init__(f"{code} at {field}: {detail}")
        self.code = code
        self.field = field
        self.detail = detail

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "field": self.field, "detail": self.detail}


@dataclass(frozen=True)
class OrderLine:
    line_id: str  #: the channel's sub-order id, or the 1-based position when the channel has none
    sku: str  #: merchant SKU code (what the warehouses stock)
    channel_sku_id: str  #: the channel's own SKU id, kept for reconciliation with the channel
    qty: int
    unit_price_fen: int
    paid_fen: int  #: what the buyer paid for this line after discounts
    gift: bool = False


@dataclass(frozen=True)
class ShipTo:
    province: str  #: full official name, e.g. 广东省
    province_code: str  #: GB/T 2260 two-digit code, e.g. "44"
    city: str
    district: str


@dataclass(frozen=True)
class Notes:
    buyer: str = ""
    merchant: str = ""


@dataclass(frozen=True)
class CanonicalOrder:
    order_id: str  #: "<channel>:<channel order id>"
    channel: str
    channel_order_id: str
    status: str
    created_at: str
    paid_at: str | None
    payment_fen: int
    freight_fen: int
    lines: tuple[OrderLine, ...]
    ship_to: ShipTo
    notes: Notes = field(default_factory=Notes)
    urgent: bool = False
    #: When the channel last changed the order (orders re-sends: the newest state wins).
    updated_at: str | None = None
    #: When an unpaid order lapses if not paid (null when paid or the channel gives none).
    expires_at: str | None = None
    #: "order" when the channel takes stock at order time (douyin reduce_stock_type 1), else "payment".
    reserve_on: str = "payment"
    schema: int = 1

    def to_dict(self) -> dict[str, Any]:
        # By hand, not dataclasses.asdict: asdict deep-copies recursively and was ~2% of a worker.
        d = {name: getattr(self, name) for name in _ORDER_FIELDS}
        d["lines"] = [{name: getattr(line, name) for name in _LINE_FIELDS} for line in self.lines]
        d["ship_to"] = {name: getattr(self.ship_to, name) for name in _SHIP_TO_FIELDS}
        d["notes"] = {"buyer": self.notes.buyer, "merchant": self.notes.merchant}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CanonicalOrder:
        return cls(
            order_id=d["order_id"], channel=d["channel"], channel_order_id=d["channel_order_id"],
            status=d["status"], created_at=d["created_at"], paid_at=d.get("paid_at"),
            payment_fen=d["payment_fen"], freight_fen=d["freight_fen"],
            lines=tuple(OrderLine(**line) for line in d["lines"]),
            ship_to=ShipTo(**d["ship_to"]), notes=Notes(**(d.get("notes") or {})),
            urgent=bool(d.get("urgent", False)), updated_at=d.get("updated_at"),
            expires_at=d.get("expires_at"), reserve_on=d.get("reserve_on", "payment"),
            schema=int(d.get("schema", 1)),
        )


_ORDER_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(CanonicalOrder))
_LINE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(OrderLine))
_SHIP_TO_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ShipTo))
