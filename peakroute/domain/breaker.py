"""Surge circuit breaker: the detection math and the state machine (pure, no Redis, no Kafka).

A *key* is what surges: a channel (``channel:douyin``) or a SKU (``sku:SKU-LIPSTICK-07``).  Its rate
over a sliding window is compared with a learned baseline (an exponentially weighted average of
earlier windows).  The field's rule of thumb — an order count up 300% triggers manual review — is the
default: trip at 4× baseline, but only above a minimum volume, so a quiet SKU going from 1 to 5
orders does not trip.

States:  closed ──surge──▶ open ──surge over (or operator drain)──▶ half_open ──held all drained──▶ closed
                              ▲                                        │
                              └──────────── surge again ───────────────┘
- closed: orders flow.
- open: new orders for the key are held for review (not reserved).
- half_open: held orders drain back at a controlled rate (token bucket) while the rate is watched.
An operator can trip or close a breaker, set its drain rate, approve or reject held orders.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any

from .inventory import sku_partition

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True)
class BreakerConfig:
    window_s: int = 10  #: sliding window the current rate is measured over
    tick_s: float = 1.0  #: how often the breakers are evaluated (with the sliding-window rate)
    trip_ratio: float = 4.0  #: trip when rate >= ratio × baseline (+300%)
    min_rate: float = 5.0  #: orders/s under which a key never trips (minimum volume)
    baseline_alpha: float = 0.2  #: EWMA weight of one whole new window in the baseline
    warmup_windows: int = 3  #: windows of history needed before the baseline is trusted
    calm_windows: int = 1  #: calm windows before an open breaker starts draining
    drain_rate: float = 20.0  #: minimum orders/s released while half-open (else 2 × baseline)
    bypass_priority: int = 1  #: orders with priority <= this are never held (0 = nobody bypasses)

    @property
    def ticks_per_window(self) -> float:
        return self.window_s / self.tick_s

    @property
    def alpha(self) -> float:
        """EWMA weight per tick, equivalent to ``baseline_alpha`` per window."""
        return 1 - (1 - self.baseline_alpha) ** (1 / self.ticks_per_window)


@dataclass(frozen=True)
class Breaker:
    key: str
    state: str = CLOSED
    since: float = 0.0  #: when the state began (epoch seconds)
    baseline: float = 0.0  #: learned orders/s
    ticks_seen: int = 0
    rate: float = 0.0  #: last measured orders/s over the window
    calm: int = 0  #: consecutive calm ticks while open
    drain_rate: float = 0.0  #: orders/s released while half-open (0 = automatic)
    tokens: float = 0.0  #: token bucket for draining
    last_refill: float = 0.0
    manual: bool = False  #: tripped by an operator: stays open until an operator acts
    trips: int = 0
    reason: str = ""
    #: the number of the last evaluation tick that observed this key (0: none, or written before
    #: ticks were numbered); the ticks in between saw the key idle (see :func:`catch_up`)
    tick: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)  # exactly the fields, in their order (no other attributes are set)

    @classmethod
    def from_dict(cls, d: dict) -> Breaker:
        """From stored JSON; fields this version does not know are ignored, missing ones default."""
        if d.keys() <= _FIELDS and "key" in d:
            return _with(_TEMPLATE, **d)
        return cls(**{k: v for k, v in d.items() if k in _FIELDS})

    @property
    def holding(self) -> bool:
        """New orders for this key are held (open) or queued behind the drain (half-open)."""
        return self.state in (OPEN, HALF_OPEN)

    def effective_drain_rate(self, cfg: BreakerConfig) -> float:
        return self.drain_rate or max(cfg.drain_rate, 2 * self.baseline)


_FIELDS = frozenset(f.name for f in fields(Breaker))
_TEMPLATE = Breaker("")
assert all(f.default is not MISSING for f in fields(Breaker) if f.name != "key")


def _with(b: Breaker, **changes: Any) -> Breaker:
    """``dataclasses.replace`` without its per-field ``__init__``: a tick copies each breaker it
    evaluates four times, and ``replace`` was ~a fifth of a 10,000-key tick's CPU.  Only the
    field names of :class:`Breaker` are passed here."""
    new = object.__new__(Breaker)
    d = new.__dict__
    d.update(b.__dict__)
    d.update(changes)
    return new


def shard_of(key: str, partitions: int) -> str:
    """Which shard of the breakers a key belongs to, and so which worker evaluates it: a SKU's
    breaker goes with the partition that owns the SKU's stock (``sku_partition``), so the ticks
    are spread over the workers as the SKUs are; a channel's (orders of every partition) with
    the leader, shard ``"c"``."""
    if key.startswith("sku:"):
        return str(sku_partition(key[4:], partitions))
    return "c"


def surging(b: Breaker, rate: float, cfg: BreakerConfig) -> bool:
    """Is ``rate`` a surge for this key?  Needs a trusted baseline and the minimum volume."""
    if rate < cfg.min_rate or b.ticks_seen < cfg.warmup_windows * cfg.ticks_per_window:
        return False
    return rate >= cfg.trip_ratio * b.baseline


def observe(b: Breaker, rate: float, now: float, cfg: BreakerConfig, held: int) -> Breaker:
    """One tick: the key's rate over the last window is ``rate`` orders/s (counted across every
    worker); ``held`` orders are still held for it.  Move the state machine.

    The baseline learns only from calm ticks, so a surge never teaches the breaker that the surge
    is normal.
    """
    surge = surging(b, rate, cfg)
    if not surge:
        baseline = rate if b.ticks_seen == 0 else (1 - cfg.alpha) * b.baseline + cfg.alpha * rate
        b = _with(b, baseline=baseline, ticks_seen=b.ticks_seen + 1)
    b = _with(b, rate=rate)
    if b.state == CLOSED:
        if surge:
            return _with(b, state=OPEN, since=now, calm=0, trips=b.trips + 1,
                           reason=f"rate {rate:.1f}/s >= {cfg.trip_ratio:g} x baseline {b.baseline:.1f}/s")
        return b
    if b.state == OPEN:
        if b.manual:
            return b
        calm = 0 if surge else b.calm + 1
        if calm >= cfg.calm_windows * cfg.ticks_per_window:
            return _with(b, state=HALF_OPEN, since=now, calm=0, tokens=0.0, last_refill=now)
        return _with(b, calm=calm)
    # HALF_OPEN: draining while the rate is watched.
    if surge and not b.manual:
        return _with(b, state=OPEN, since=now, calm=0, trips=b.trips + 1,
                       reason=f"surge persisted while draining: {rate:.1f}/s")
    if held == 0:
        return _with(b, state=CLOSED, since=now, tokens=0.0, manual=False, drain_rate=0.0, reason="")
    return b


def catch_up(b: Breaker, tick: int, cfg: BreakerConfig) -> Breaker:
    """The breaker as if the ticks since it was last observed had each observed a rate of 0.

    Why: the tick observes only the keys with orders in the window, the channels and the
    breakers not closed — not every SKU ever counted, whose number grows with the catalog.  A
    closed breaker skipped because its key was idle would have seen rate 0 at each of those ticks:
    below the minimum volume, never a surge, so its baseline decayed by ``1 - alpha`` per tick and
    nothing else changed.  That is applied here in one step, when the key is next observed.
    Only ticks that ran are counted (``tick`` is the number of this one): a tick that did not run
    (Redis away, no leader) observed no key, and still does not."""
    idle = tick - b.tick - 1
    if b.tick <= 0 or idle <= 0 or b.state != CLOSED:
        return b
    baseline = 0.0 if b.ticks_seen == 0 else b.baseline * (1 - cfg.alpha) ** idle
    return _with(b, baseline=baseline, ticks_seen=b.ticks_seen + idle, rate=0.0)


def take_tokens(b: Breaker, now: float, cfg: BreakerConfig, wanted: int) -> tuple[Breaker, int]:
    """How many held orders may be released now (token bucket at the drain rate, burst of 1 s)."""
    if b.state != HALF_OPEN or wanted <= 0:
        return b, 0
    rate = b.effective_drain_rate(cfg)
    tokens = min(rate, b.tokens + max(0.0, now - b.last_refill) * rate)
    n = min(wanted, int(tokens))
    return _with(b, tokens=tokens - n, last_refill=now), n


def advance(b: Breaker, tick: int, rate: float, now: float, cfg: BreakerConfig, held: int) -> tuple[Breaker, int]:
    """One evaluation tick of a breaker, numbered ``tick``: the ticks it sat out caught up, the
    window's ``rate`` observed, and how many of its ``held`` orders the drain releases now."""
    b = observe(catch_up(b, tick, cfg), rate, now, cfg, held)
    b, released = take_tokens(b, now, cfg, held)
    return _with(b, tick=tick), released


def trip(b: Breaker, now: float, reason: str = "tripped by operator") -> Breaker:
    """Operator: hold new orders for this key until an operator drains or closes it."""
    return _with(b, state=OPEN, since=now, manual=True, calm=0, trips=b.trips + 1, reason=reason)


def drain(b: Breaker, now: float, rate: float | None = None) -> Breaker:
    """Operator: start releasing held orders (at ``rate`` orders/s if given)."""
    return _with(b, state=HALF_OPEN, since=now, manual=False, tokens=0.0, last_refill=now,
                   drain_rate=b.drain_rate if rate is None else rate)


def close(b: Breaker, now: float) -> Breaker:
    """Operator: close.  Orders still held drain first at the drain rate (never dropped), then the
    breaker closes by itself."""
    return drain(b, now) if b.state != CLOSED else b


def keys_for(channel: str, skus: list[str]) -> list[str]:
    """The breaker keys an order counts towards: its channel and each of its SKUs."""
    return [f"channel:{channel}", *(f"sku:{s}" for s in dict.fromkeys(skus))]


def must_hold(holding_keys: set[str], channel: str, skus: list[str], priority: int, cfg: BreakerConfig) -> list[str]:
    """The holding breakers this order falls under (none when its priority bypasses them)."""
    if priority <= cfg.bypass_priority:
        return []
    return [k for k in keys_for(channel, skus) if k in holding_keys]
