"""Channel timestamps to ISO-8601 UTC (``2026-11-10T16:00:03Z``).

Tmall and JD send Beijing wall-clock strings (``"2026-11-11 00:00:03"``, UTC+8, China has no
daylight saving); Douyin and WeChat send Unix seconds.  Parsers return Unix seconds (``int``) so
that orders can compare and add times cheaply; :func:`iso_utc` formats them once, at the end.

A time outside [2009-01-01, 2100-01-01) UTC is refused (``bad_timestamp``): no order on these
platforms predates 2009, and anything that far out is a unit mix-up (milliseconds sent as seconds
land in the year 58000) or garbage.  Unset pay times (JD's ``"0001-01-01 00:00:00"``, Unix ``0``,
absent, null, empty) are ``None`` where the field is optional.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal, overload

from .canonical import Rejection

MIN_EPOCH = 1_230_768_000  #: 2009-01-01T00:00:00Z
MAX_EPOCH = 4_102_444_800  #: 2100-01-01T00:00:00Z (exclusive)
#: What JD puts in ``paymentConfirmTime`` while an order is unpaid.
JD_UNSET = "0001-01-01 00:00:00"
#: How far a pay time may precede the creation time.  Channel clocks drift by a few seconds
#: between their order and payment services; more than a minute is a broken payload.
PAY_BEFORE_CREATE_TOLERANCE_S = 60

_BEIJING_OFFSET_S = 8 * 3600
_UNIX_EPOCH = datetime(1970, 1, 1)
_ONE_SECOND = timedelta(seconds=1)


@overload
def beijing_to_epoch(value: object, field: str, *, optional: Literal[False] = False) -> int: ...
@overload
def beijing_to_epoch(value: object, field: str, *, optional: bool) -> int | None: ...


def beijing_to_epoch(value: object, field: str, *, optional: bool = False) -> int | None:
    """Unix seconds of a Beijing ``"yyyy-MM-dd HH:mm:ss"`` string.

    ``optional`` fields give ``None`` when unset (absent, null, ``""`` or JD's ``0001-01-01``
    marker); required ones raise ``missing_field`` when absent, null or empty.  Malformed or
    impossible times (``2026-02-30``, ``25:00:00``) and times out of range raise ``bad_timestamp``.
    """
    if value is None or value == "" or (optional and value == JD_UNSET):
        if optional:
            return None
        raise Rejection("missing_field", field, "required time is missing")
    if type(value) is not str:
        raise Rejection("bad_timestamp", field, f"expected a 'yyyy-MM-dd HH:mm:ss' string, got {value!r:.40}")
    if (
        len(value) != 19 or value[4] != "-" or value[7] != "-" or value[10] != " " or value[13] != ":"
        or value[16] != ":" or not value.isascii()
    ):
        raise Rejection("bad_timestamp", field, f"not a 'yyyy-MM-dd HH:mm:ss' time: {value!r:.40}")
    try:  # the shape is checked above, so fromisoformat (fast, C) reads exactly yyyy-MM-dd HH:mm:ss
        wall = datetime.fromisoformat(value)
    except ValueError:
        raise Rejection("bad_timestamp", field, f"not a valid 'yyyy-MM-dd HH:mm:ss' time: {value!r}") from None
    return _in_range((wall - _UNIX_EPOCH) // _ONE_SECOND - _BEIJING_OFFSET_S, field, value)


@overload
def unix_to_epoch(value: object, field: str, *, optional: Literal[False] = False) -> int: ...
@overload
def unix_to_epoch(value: object, field: str, *, optional: bool) -> int | None: ...


def unix_to_epoch(value: object, field: str, *, optional: bool = False) -> int | None:
    """Validated Unix seconds.

    ``optional`` fields give ``None`` when unset (absent, null or ``0``, which Douyin and WeChat
    send for "not paid yet"); required ones raise ``missing_field`` when absent or null.  Non-integers
    (floats, strings, booleans) and times out of range raise ``bad_timestamp``.
    """
    if value is None or (optional and value == 0 and type(value) is int):
        if optional:
            return None
        raise Rejection("missing_field", field, "required time is missing")
    if type(value) is not int:
        raise Rejection("bad_timestamp", field, f"expected integer Unix seconds, got {value!r:.40}")
    return _in_range(value, field, value)


def iso_utc(epoch: int) -> str:
    """``2026-11-10T16:00:03Z`` for Unix seconds (assumed in range)."""
    return (_UNIX_EPOCH + timedelta(seconds=epoch)).isoformat() + "Z"


def beijing_to_iso(value: object, field: str, *, optional: bool = False) -> str | None:
    """ISO UTC of a Beijing time string (see :func:`beijing_to_epoch`)."""
    epoch = beijing_to_epoch(value, field, optional=optional)
    return None if epoch is None else iso_utc(epoch)


def unix_to_iso(value: object, field: str, *, optional: bool = False) -> str | None:
    """ISO UTC of Unix seconds (see :func:`unix_to_epoch`)."""
    epoch = unix_to_epoch(value, field, optional=optional)
    return None if epoch is None else iso_utc(epoch)


def check_paid_after_created(created: int, paid: int | None, field: str) -> None:
    """Refuse (``bad_timestamp`` on the pay-time ``field``) a payment well before its order existed."""
    if paid is not None and paid < created - PAY_BEFORE_CREATE_TOLERANCE_S:
        raise Rejection(
            "bad_timestamp", field,
            f"paid at {iso_utc(paid)}, more than {PAY_BEFORE_CREATE_TOLERANCE_S} s before the order "
            f"was created at {iso_utc(created)}",
        )


def _in_range(epoch: int, field: str, raw: object) -> int:
    if not MIN_EPOCH <= epoch < MAX_EPOCH:
        raise Rejection("bad_timestamp", field, f"{raw!r:.40} is outside 2009-01-01..2100-01-01 UTC")
    return epoch
