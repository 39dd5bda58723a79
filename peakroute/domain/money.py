"""Money as integer fen: parsing the channels' amounts and splitting order-level amounts over lines.

Every amount in the canonical order is an ``int`` number of fen (1 yuan = 100 fen), because integer
arithmetic is exact: line amounts add up to order amounts to the fen, which reconciliation with the
channels and finance depends on.  Tmall and JD send yuan as decimal *strings* (``"219.00"``);
Douyin and WeChat send integer fen.  Anything else is refused (``bad_money``) rather than guessed.
"""

from __future__ import annotations

from collections.abc import Sequence

from .canonical import Rejection

#: Largest amount accepted, in fen (100 million yuan).  No single order is worth more; a bigger
#: number is a unit mix-up or garbage, and refusing it also bounds the digits we parse.
MAX_FEN = 100_000_000 * 100
_MAX_YUAN_CHARS = 13  # "100000000.00": 12 characters, one spare; longer strings are refused unparsed.


def yuan_to_fen(value: object, field: str) -> int:
    """Fen in a yuan string such as ``"219.00"``, ``"0.5"`` or ``"12"``.

    Only plain ASCII decimal strings with at most two decimals are accepted.  Refused
    (``bad_money``): blanks, signs, negatives, exponents, more than two decimals, amounts above
    :data:`MAX_FEN`, and every non-string.  JSON *numbers* are refused on purpose: a float cannot
    hold most fen amounts exactly (``0.1 + 0.2 != 0.3``), so money that went through a float may
    already be wrong; and an integer in a yuan field most likely means the channel switched to fen,
    where guessing would be off by a factor of 100.
    """
    if type(value) is not str:
        raise Rejection("bad_money", field, f"a yuan amount must be a JSON string, got {json_kind(value)}")
    if not value or len(value) > _MAX_YUAN_CHARS:
        raise Rejection("bad_money", field, f"not a yuan amount: {value[:20]!r}")
    whole, dot, frac = value.partition(".")
    if not (value.isascii() and whole.isdigit() and (not dot or (0 < len(frac) <= 2 and frac.isdigit()))):
        reason = "negative amount" if value.startswith("-") else "not a yuan amount with at most 2 decimals"
        raise Rejection("bad_money", field, f"{reason}: {value!r}")
    amount = int(whole) * 100
    if frac:
        amount += int(frac) * 10 if len(frac) == 1 else int(frac)
    if amount > MAX_FEN:
        raise Rejection("bad_money", field, f"amount {value!r} yuan is above the {MAX_FEN // 100} yuan limit")
    return amount


def fen(value: object, field: str) -> int:
    """An integer fen amount as Douyin and WeChat send it: a JSON integer from 0 to :data:`MAX_FEN`.

    Booleans are refused although Python counts them as ints (``true`` is not an amount), and so
    are floats (``100.0``) and digit strings: the field is documented as an integer.
    """
    if type(value) is not int:
        raise Rejection("bad_money", field, f"a fen amount must be a JSON integer, got {json_kind(value)}")
    if value < 0:
        raise Rejection("bad_money", field, f"negative amount: {value}")
    if value > MAX_FEN:
        raise Rejection("bad_money", field, f"amount {value} fen is above the {MAX_FEN} fen limit")
    return value


def allocate(total_fen: int, weights: Sequence[int]) -> list[int]:
    """Split ``total_fen`` over lines in proportion to ``weights``; the shares sum exactly to it.

    Used where a channel gives only order-level amounts (JD: what the buyer paid for the goods is
    spread over lines by list value, price x quantity).  Largest-remainder method: each line gets
    the floor of its exact share, then the fen left over go one each to the lines with the largest
    remainders, earlier lines first on ties, so the result is deterministic.  When every weight is
    zero the total is split evenly.  Programmer errors (negative total or weight, a non-zero total
    over no lines) raise ``ValueError``: callers validate channel data before calling.
    """
    if total_fen < 0:
        raise ValueError(f"cannot allocate a negative total: {total_fen}")
    n = len(weights)
    if n == 0:
        if total_fen:
            raise ValueError("cannot allocate a non-zero total over no lines")
        return []
    if any(w < 0 for w in weights):
        raise ValueError(f"weights must not be negative: {list(weights)}")
    denominator = sum(weights)
    if denominator == 0:
        weights, denominator = [1] * n, n
    shares: list[int] = []
    remainders: list[int] = []
    for w in weights:
        share, remainder = divmod(total_fen * w, denominator)
        shares.append(share)
        remainders.append(remainder)
    left = total_fen - sum(shares)  # < n, one fen each for the largest remainders
    if left:
        for i in sorted(range(n), key=lambda i: (-remainders[i], i))[:left]:
            shares[i] += 1
    return shares


def json_kind(value: object) -> str:
    """The JSON type name of a decoded value, for rejection details."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
