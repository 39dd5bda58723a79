"""Money: yuan strings and integer fen into fen, and exact allocation of order amounts over lines."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peakroute.domain.canonical import Rejection
from peakroute.domain.money import MAX_FEN, allocate, fen, yuan_to_fen


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("219.00", 21900), ("0.5", 50), ("12", 1200), ("0", 0), ("0.00", 0), ("0.01", 1), ("299.50", 29950),
        ("007.10", 710), ("100000000.00", MAX_FEN),
    ],
)
def test_yuan_to_fen_accepts_plain_yuan_strings(text: str, expected: int) -> None:
    assert yuan_to_fen(text, "payment") == expected


@pytest.mark.parametrize(
    "value",
    [
        "-1", "-0.01", "+1", "1.234", "1.", ".5", "1e3", "1E3", "", " ", " 1", "1 ", "1,000.00", "1.2.3",
        "NaN", "inf", "１２", "²", "١٢", "100000000.01", "9" * 40, "0x10", "1_000",
        True, False, None, 12, 0, 1.5, 219.0, [], {}, ["1"],
    ],
)
def test_yuan_to_fen_refuses_anything_else(value: object) -> None:
    with pytest.raises(Rejection) as err:
        yuan_to_fen(value, "trade.payment")
    assert err.value.code == "bad_money"
    assert err.value.field == "trade.payment"


def test_yuan_to_fen_says_negative() -> None:
    with pytest.raises(Rejection, match="negative"):
        yuan_to_fen("-5.00", "x")


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (1, 1), (39800, 39800), (MAX_FEN, MAX_FEN)])
def test_fen_accepts_non_negative_integers(value: int, expected: int) -> None:
    assert fen(value, "pay_amount") == expected


@pytest.mark.parametrize("value", [-1, MAX_FEN + 1, True, False, 1.0, 39800.0, "39800", None, [], {}])
def test_fen_refuses_anything_else(value: object) -> None:
    with pytest.raises(Rejection) as err:
        fen(value, "data.pay_amount")
    assert (err.value.code, err.value.field) == ("bad_money", "data.pay_amount")


@given(st.integers(min_value=0, max_value=MAX_FEN))
@settings(max_examples=300)
def test_money_round_trips_through_every_yuan_spelling(amount: int) -> None:
    yuan, cents = divmod(amount, 100)
    assert yuan_to_fen(f"{yuan}.{cents:02d}", "f") == amount
    assert fen(amount, "f") == amount
    if cents % 10 == 0:
        assert yuan_to_fen(f"{yuan}.{cents // 10}", "f") == amount
    if cents == 0:
        assert yuan_to_fen(str(yuan), "f") == amount


@given(st.text(alphabet="0123456789.-+eE ", max_size=16) | st.text(max_size=16))
@settings(max_examples=300)
def test_yuan_to_fen_agrees_with_decimal_or_refuses(text: str) -> None:
    try:
        got = yuan_to_fen(text, "f")
    except Rejection as err:
        assert err.code == "bad_money"
        return
    exact = Decimal(text) * 100  # anything accepted must be a plain decimal
    assert exact == got and 0 <= got <= MAX_FEN
    assert text.replace(".", "", 1).isdigit() and len(text.partition(".")[2]) <= 2


def test_allocate_splits_in_proportion_with_largest_remainders() -> None:
    # 99999 fen over list values 100/300/300/200/100: exact shares 9999.9, 29999.7 x2, 19999.8, 9999.9
    assert allocate(99999, [10000, 30000, 30000, 20000, 10000]) == [10000, 30000, 29999, 20000, 10000]
    assert allocate(100, [1, 1, 1]) == [34, 33, 33]  # ties go to earlier lines
    assert allocate(55900, [59900]) == [55900]
    assert allocate(0, [5, 7]) == [0, 0]
    assert allocate(0, []) == []


def test_allocate_with_all_zero_weights_splits_evenly() -> None:
    assert allocate(10, [0, 0, 0]) == [4, 3, 3]


@pytest.mark.parametrize(("total", "weights"), [(-1, [1]), (5, []), (5, [1, -1])])
def test_allocate_refuses_programmer_errors(total: int, weights: list[int]) -> None:
    with pytest.raises(ValueError):
        allocate(total, weights)


@given(
    st.integers(min_value=0, max_value=MAX_FEN),
    st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=12),
)
@settings(max_examples=300)
def test_allocate_sums_exactly_and_stays_within_a_fen_of_the_exact_share(total: int, weights: list[int]) -> None:
    shares = allocate(total, weights)
    assert sum(shares) == total
    assert len(shares) == len(weights)
    denominator = sum(weights) or len(weights)
    effective = weights if sum(weights) else [1] * len(weights)
    for share, w in zip(shares, effective, strict=True):
        exact = Fraction(total * w, denominator)
        assert exact - 1 < share < exact + 1
        assert share >= 0
    assert allocate(total, weights) == shares  # deterministic
