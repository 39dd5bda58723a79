"""Which re-sent order states are news (pure)."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from peakroute.domain.dedup import OrderVersion, Verdict, judge

STATUSES = ["pending_payment", "paid", "on_hold", "cancelled", "shipped", "completed"]


def v(u: str, s: str, f: str = "x") -> OrderVersion:
    return OrderVersion(u, s, f)


def test_first_state_is_new() -> None:
    assert judge(None, v("2026-11-11T00:00:00Z", "paid")) is Verdict.NEW


def test_identical_content_is_duplicate() -> None:
    assert judge(v("2026-11-11T00:00:00Z", "paid", "a"), v("2026-11-11T00:00:00Z", "paid", "a")) is Verdict.DUPLICATE


def test_newer_different_state_is_changed() -> None:
    assert judge(v("2026-11-11T00:00:00Z", "pending_payment", "a"),
                 v("2026-11-11T00:01:00Z", "paid", "b")) is Verdict.CHANGED


def test_older_state_is_stale_so_a_cancel_before_its_create_wins() -> None:
    cancel = v("2026-11-11T00:01:00Z", "cancelled", "c")
    create = v("2026-11-11T00:00:00Z", "paid", "p")
    assert judge(None, cancel) is Verdict.NEW
    assert judge(cancel, create) is Verdict.STALE


def test_nothing_reopens_a_terminal_order() -> None:
    for s in STATUSES:
        assert judge(v("2026-11-11T00:00:00Z", "cancelled", "c"), v("2026-11-12T00:00:00Z", s, "z")) is Verdict.STALE


def test_same_time_tie_goes_to_the_further_state() -> None:
    assert judge(v("2026-11-11T00:00:00Z", "paid", "a"), v("2026-11-11T00:00:00Z", "cancelled", "b")) is Verdict.CHANGED
    assert judge(v("2026-11-11T00:00:00Z", "cancelled", "a"), v("2026-11-11T00:00:00Z", "paid", "b")) is Verdict.STALE
    assert judge(v("2026-11-11T00:00:00Z", "shipped", "a"), v("2026-11-11T00:00:00Z", "paid", "b")) is Verdict.STALE


versions = st.builds(
    OrderVersion,
    st.sampled_from([f"2026-11-11T00:00:0{i}Z" for i in range(4)]),
    st.sampled_from(STATUSES),
    st.sampled_from(["f1", "f2", "f3"]),
)


@given(st.lists(versions, min_size=1, max_size=12))
def test_emitted_sequence_never_goes_back_in_time_and_never_repeats(seq: list[OrderVersion]) -> None:
    last = None
    emitted: list[OrderVersion] = []
    for inc in seq:
        verdict = judge(last, inc)
        if verdict.emit:
            emitted.append(inc)
            last = inc
    assert emitted, "the first state is always emitted"
    for a, b in pairwise(emitted):
        assert b.updated_at >= a.updated_at
        assert b.fingerprint != a.fingerprint
        assert a.status not in ("cancelled", "completed")
