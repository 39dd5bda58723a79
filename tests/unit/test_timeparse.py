"""Channel times (Beijing wall clock strings, Unix seconds) into ISO-8601 UTC."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peakroute.domain.canonical import Rejection
from peakroute.domain.timeparse import (
    JD_UNSET,
    MAX_EPOCH,
    MIN_EPOCH,
    PAY_BEFORE_CREATE_TOLERANCE_S,
    beijing_to_epoch,
    beijing_to_iso,
    check_paid_after_created,
    iso_utc,
    unix_to_epoch,
    unix_to_iso,
)

BEIJING = timezone(timedelta(hours=8))


def test_beijing_time_is_utc_plus_eight() -> None:
    assert beijing_to_iso("2026-11-11 00:00:03", "created") == "2026-11-10T16:00:03Z"
    assert beijing_to_iso("2026-11-11 08:00:00", "created") == "2026-11-11T00:00:00Z"
    assert beijing_to_iso("2028-02-29 12:34:56", "created") == "2028-02-29T04:34:56Z"  # leap day


def test_unix_seconds_become_iso_utc() -> None:
    assert unix_to_iso(1794326403, "create_time") == "2026-11-10T16:00:03Z"
    assert iso_utc(MIN_EPOCH) == "2009-01-01T00:00:00Z"


@pytest.mark.parametrize("unset", [None, "", JD_UNSET])
def test_unset_beijing_pay_time_is_none_when_optional(unset: object) -> None:
    assert beijing_to_epoch(unset, "paymentConfirmTime", optional=True) is None
    assert beijing_to_iso(unset, "paymentConfirmTime", optional=True) is None


@pytest.mark.parametrize("unset", [None, 0])
def test_unset_unix_pay_time_is_none_when_optional(unset: object) -> None:
    assert unix_to_epoch(unset, "pay_time", optional=True) is None
    assert unix_to_iso(unset, "pay_time", optional=True) is None


@pytest.mark.parametrize("value", [None, ""])
def test_required_beijing_time_missing(value: object) -> None:
    with pytest.raises(Rejection) as err:
        beijing_to_epoch(value, "orderStartTime")
    assert (err.value.code, err.value.field) == ("missing_field", "orderStartTime")


def test_required_unix_time_missing() -> None:
    with pytest.raises(Rejection) as err:
        unix_to_epoch(None, "create_time")
    assert (err.value.code, err.value.field) == ("missing_field", "create_time")


@pytest.mark.parametrize(
    "value",
    [
        JD_UNSET,  # the unpaid marker is not a creation time
        "2026-02-30 10:00:00", "2026-13-01 00:00:00", "2026-11-11 24:00:00", "2026-11-11 23:60:00",
        "2026-11-11 23:59:60", "2008-12-31 23:59:59", "2100-01-01 08:00:00", "9999-12-31 23:59:59",
        "2026-11-11T00:00:03", "2026/11/11 00:00:03", "2026-11-11 00:00:03Z", "2026-11-11 0:00:03",
        "2026-11-11", "20261111000003", "２０２６-11-11 00:00:03", "2026-1a-11 00:00:03",
        "+026-11-11 00:00:03", " 2026-11-11 00:00:0", 1794326403, 1.5, True, [], {},
    ],
)
def test_bad_beijing_times(value: object) -> None:
    with pytest.raises(Rejection) as err:
        beijing_to_epoch(value, "trade.created", optional=False)
    assert (err.value.code, err.value.field) == ("bad_timestamp", "trade.created")


def test_range_edges_in_utc() -> None:
    assert beijing_to_epoch("2009-01-01 08:00:00", "f") == MIN_EPOCH
    with pytest.raises(Rejection):
        beijing_to_epoch("2009-01-01 07:59:59", "f")
    assert beijing_to_epoch("2100-01-01 07:59:59", "f") == MAX_EPOCH - 1
    with pytest.raises(Rejection):
        beijing_to_epoch("2100-01-01 08:00:00", "f")


@pytest.mark.parametrize(
    "value", [0, -1, MIN_EPOCH - 1, MAX_EPOCH, 1794326403000, 1794326403.0, "1794326403", True, False, [], {}],
)
def test_bad_unix_times(value: object) -> None:
    with pytest.raises(Rejection) as err:
        unix_to_epoch(value, "create_time")
    assert (err.value.code, err.value.field) == ("bad_timestamp", "create_time")


def test_false_is_not_an_unset_pay_time() -> None:
    with pytest.raises(Rejection, match="bad_timestamp"):
        unix_to_epoch(False, "pay_time", optional=True)


def test_pay_time_may_precede_creation_by_clock_skew_only() -> None:
    created = 1794326403
    check_paid_after_created(created, None, "pay_time")
    check_paid_after_created(created, created - PAY_BEFORE_CREATE_TOLERANCE_S, "pay_time")
    with pytest.raises(Rejection) as err:
        check_paid_after_created(created, created - PAY_BEFORE_CREATE_TOLERANCE_S - 1, "trade.pay_time")
    assert (err.value.code, err.value.field) == ("bad_timestamp", "trade.pay_time")


@given(st.datetimes(min_value=datetime(2009, 1, 1, 8), max_value=datetime(2100, 1, 1, 7, 59, 59)))
@settings(max_examples=300)
def test_beijing_strings_agree_with_zoneinfo_arithmetic(wall: datetime) -> None:
    wall = wall.replace(microsecond=0)
    text = wall.strftime("%Y-%m-%d %H:%M:%S")
    expected = wall.replace(tzinfo=BEIJING).astimezone(UTC)
    assert beijing_to_iso(text, "f") == expected.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert beijing_to_epoch(text, "f") == int(expected.timestamp())


@given(st.integers(min_value=MIN_EPOCH, max_value=MAX_EPOCH - 1))
@settings(max_examples=300)
def test_unix_seconds_agree_with_datetime(epoch: int) -> None:
    expected = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert unix_to_iso(epoch, "f") == expected


@given(st.text(max_size=25) | st.from_regex(r"\A\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\Z"))
@settings(max_examples=300)
def test_any_text_gives_a_time_or_a_rejection(text: str) -> None:
    try:
        epoch = beijing_to_epoch(text, "f", optional=True)
    except Rejection as err:
        assert err.code == "bad_timestamp"
        return
    assert epoch is None or MIN_EPOCH <= epoch < MAX_EPOCH


_STRICT = re.compile(r"\A(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)\Z", re.ASCII)


def _oracle(text: str) -> int | None:
    """Unix seconds of a strict Beijing time by regex and datetime, or None when it is not one."""
    match = _STRICT.match(text)
    if not match:
        return None
    try:
        wall = datetime(*map(int, match.groups()), tzinfo=BEIJING)
    except ValueError:
        return None
    epoch = int(wall.timestamp())
    return epoch if MIN_EPOCH <= epoch < MAX_EPOCH else None


@given(
    st.from_regex(r"\A\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\Z")
    | st.from_regex(r"\A.{4}-.{2}-.{2} .{2}:.{2}:.{2}\Z")
    | st.lists(st.sampled_from([*"0123456789-: +TZ.", "2026", "11", "24", "60", "29", "02"]), max_size=12).map("".join)
)
@settings(max_examples=300)
def test_beijing_parser_agrees_with_a_strict_regex_oracle(text: str) -> None:
    try:
        got = beijing_to_epoch(text, "f")
    except Rejection:
        got = None
    assert got == _oracle(text)
