"""The order side of reservation: one order's life from canonical order to routed shipments.

A pure state machine.  Each input — a new canonical order state, a reply from a SKU owner, an expiry
tick — gives a new order state plus *effects* for the agent to carry out: stock operations for the
SKU owners, shipment / cancel requests for warehouses, order events.  The order never touches stock
itself: it proposes a plan (from a possibly stale view of stock), each line's SKU owner confirms or
refuses, and the order either routes (all lines confirmed) or compensates — releases exactly what
was confirmed — and re-plans, a bounded number of times, before backordering.

Attempts number the plans.  Every stock operation and every reply carries the attempt, so a reply
to an old plan can never be mistaken for one to the current plan; a confirmation nobody wants any
more (old attempt, or the order was cancelled meanwhile) is released at once.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .catalog import Catalog
from .network import Network
from .routing import LineNeed, Plan, plan_order

#: Order states (``state["status"]``) — the router's view, not the channel's.
WAITING = "waiting"  # known, nothing to reserve yet (unpaid and reserve-on-payment, or on hold)
RESERVING = "reserving"
ROUTED = "routed"
BACKORDERED = "backordered"
CANCELLED = "cancelled"
SHIPPED = "shipped"
HELD = "held"  # held for review by the surge breaker (later stage)
#: Not an order yet: a review decision (release / reject) that arrived before the order itself.
DECIDED_EARLY = "decided_early"


@dataclass
class Effects:
    """What the agent must do after a transition, in this order."""

    stock_ops: list[dict[str, Any]] = field(default_factory=list)  # each has "sku"
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (warehouse, request)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: Review-topic records (held / released / approved / rejected).
    review: list[dict[str, Any]] = field(default_factory=list)
    #: (breaker key, order_id) newly held; order ids no longer held.
    held: list[tuple[str, str]] = field(default_factory=list)
    unheld: list[str] = field(default_factory=list)

    def extend(self, other: Effects) -> None:
        self.stock_ops += other.stock_ops
        self.requests += other.requests
        self.events += other.events
        self.review += other.review
        self.held += other.held
        self.unheld += other.unheld


@dataclass(frozen=True)
class StockView:
    """What the planner may know: units available (possibly stale) and warehouse capacity left."""

    available: Callable[[str, str], int]
    capacity_left: Callable[[str], int]


def _event(order_id: str, kind: str, now: str, **detail: Any) -> dict[str, Any]:
    return {"order_id": order_id, "event": kind, "at": now, **detail}


def shipment_id(order_id: str, warehouse: str, attempt: int, plan: str = "") -> str:
    """``<order_id>/<warehouse>/<attempt>.<plan>``: the same plan always sends the same id (so a
    WMS can drop a re-sent request), two plans never do (so a cancel never hits the wrong one)."""
    return f"{order_id}/{warehouse}/{attempt}" + (f".{plan}" if plan else "")


def cancel_request(order_id: str, warehouse: str, sid: str, reason: str, now: str,
                   precautionary: bool = False) -> dict[str, Any]:
    """A warehouse's cancel request (``precautionary``: the shipment may never have been sent)."""
    req: dict[str, Any] = {"type": "cancel_request", "shipment_id": sid, "order_id": order_id,
                           "warehouse": warehouse, "reason": reason, "requested_at": now}
    if precautionary:
        req["precautionary"] = True
    return req


_plan_random = random.Random()  # seeded from os.urandom: each process (each restart) draws its own ids
os.register_at_fork(after_in_child=_plan_random.seed)  # and a forked child too


def _random_plan_id() -> str:
    return f"{_plan_random.getrandbits(32):08x}"


class OrderRouter:
    """Transitions of one order's state (a JSON-able dict kept in a changelog-backed table)."""

    def __init__(self, network: Network, catalog: Catalog, plan_ids: Callable[[], str] | None = None) -> None:
        self.network = network
        self.catalog = catalog
        self.warehouses = network.by_code()
        #: A fresh id for every plan (see _start_attempt); random, so a plan made again after a
        #: crash never shares its id with the plan the crash lost.  From a generator seeded by the
        #: OS once per process, not an OS call per plan (``secrets``: 1.6% of a soak's event loop).
        self.plan_ids = plan_ids or _random_plan_id

    # -- inputs ----------------------------------------------------------------------------------
    def wants_stock(self, order: dict) -> bool:
        return order["status"] == "paid" or (order["status"] == "pending_payment" and order.get("reserve_on") == "order")

    def priority_of(self, order: dict) -> int:
        categories = {(item.category if (item := self.catalog.get(line["sku"])) else "general")
                      for line in order["lines"]}
        return self.network.priority(urgent=bool(order.get("urgent")), payment_fen=int(order["payment_fen"]),
                                     categories=categories)

    def on_order(self, state: dict | None, order: dict, view: StockView, now: str,
                 hold_keys: list[str] | tuple[str, ...] = ()) -> tuple[dict, Effects]:
        """A new canonical state of the order arrived (already deduplicated upstream).

        ``hold_keys``: the surge breakers that are holding orders like this one; a new order that
        wants stock is then held for review instead of reserved.
        """
        if state is not None and state["status"] == DECIDED_EARLY:
            return self._decided_before_it_arrived(state["early"][0], order, view, now)
        return self._on_order(state, order, view, now, hold_keys)

    def on_decision_before_order(self, state: dict | None, order_id: str, outcome: str, by: str,
                                 now: str, breaker: str | None = None) -> dict:
        """A review decision (``release`` / ``reject``) for an order this owner has no state for:
        kept, and applied when the order arrives (:meth:`on_order`).  The first decision wins, as
        it does for a held order.

        Why: a worker stopped after its batch put a held order in Redis but before it wrote the
        order's state; the next owner reads the order again.  An operator's decision made in
        between travels on another topic (stock-replies) and can arrive first — dropped, the
        order would be held again and later drained and routed although the operator rejected it."""
        if state is not None:
            return state
        return {"order_id": order_id, "status": DECIDED_EARLY,
                "early": [{"outcome": outcome, "by": by, "at": now, "breaker": breaker}]}

    def _decided_before_it_arrived(self, decision: dict, order: dict, view: StockView,
                                   now: str) -> tuple[dict, Effects]:
        """The order arrives after its review decision: held as it was before, then decided at once."""
        state, fx = self._on_order(None, order, view, now, hold_keys=[decision.get("breaker") or "review"])
        fx.held.clear()  # decided already: never held again in the breaker's store
        if decision["outcome"] == "reject":  # held or not (not paid yet, say): the rejection stands
            decide = self.on_reject(state, now, decision["by"], breaker=decision.get("breaker"))
        elif state["status"] == HELD:
            decide = self.on_release(state, view, now, decision["by"])
        else:
            return state, fx
        state, more = decide
        fx.extend(more)
        return state, fx

    def _on_order(self, state: dict | None, order: dict, view: StockView, now: str,
                  hold_keys: list[str] | tuple[str, ...] = ()) -> tuple[dict, Effects]:
        fx = Effects()
        oid = order["order_id"]
        status = order["status"]
        if state is None:
            state = {"order_id": oid, "status": WAITING, "attempt": 0, "order": order, "holds": {},
                     "replies": {}, "plan": [], "sent": [], "shipped": []}
            fx.events.append(_event(oid, "accepted", now, channel=order["channel"], channel_status=status))
        elif state["status"] == CANCELLED:
            return state, fx  # nothing reopens a cancelled order
        else:
            state = {**state, "order": order}
        if status == "cancelled":
            return self._cancel(state, now, "channel_cancelled", fx)
        if state["status"] == HELD:
            return state, fx  # stays held (with its latest state) until released or rejected
        if status == "on_hold":
            if state["status"] in (RESERVING, ROUTED):
                state, more = self._unwind(state, now, "on_hold")
                fx.extend(more)
            if state["status"] != WAITING:
                state["status"] = WAITING
            fx.events.append(_event(oid, "on_hold", now))
            return state, fx
        wants_stock = self.wants_stock(order)
        if wants_stock and hold_keys and state["status"] == WAITING:
            key = hold_keys[0]
            state = {**state, "status": HELD, "held_by": key, "held_at": now}
            fx.events.append(_event(oid, "held", now, breaker=key, keys=list(hold_keys)))
            fx.review.append({"type": "held", "order_id": oid, "breaker": key, "keys": list(hold_keys),
                              "reason": f"surge breaker {key} is holding new orders", "at": now, "order": order})
            fx.held.append((key, oid))
            return state, fx
        if wants_stock and state["status"] in (WAITING, BACKORDERED):
            state, more = self._start_attempt(state, view, now)
            fx.extend(more)
        elif status in ("shipped", "completed") and state["status"] not in (SHIPPED,):
            fx.events.append(_event(oid, "channel_" + status, now))
        return state, fx

    def on_reply(self, state: dict | None, reply: dict, view: StockView, now: str) -> tuple[dict | None, Effects]:
        """A SKU owner's answer about one line: confirmed / refused / stale / evicted / shipped."""
        fx = Effects()
        outcome, line_id, attempt = reply["outcome"], reply["line_id"], reply["attempt"]
        plan = reply.get("plan", "")
        this_plan = state is not None and attempt == state["attempt"] and plan == state.get("plan_id", "")
        current = state is not None and this_plan and state["status"] == RESERVING \
            and self._planned(state, line_id) == (reply["warehouse"], int(reply["qty"]))
        if outcome == "confirmed" and not current:
            held_here = state is not None and this_plan and state["status"] == ROUTED \
                and state["holds"].get(line_id) == [reply["warehouse"], attempt]
            if not held_here:  # a confirmation nobody wants: give the units back
                fx.stock_ops.append(self._op("release", reply["order_id"], line_id, reply["sku"], attempt=attempt,
                                             warehouse=reply["warehouse"], plan=plan))
                if plan and (state is None or plan not in state.get("plans", ())):
                    # A plan this order's state never had: made by a worker that crashed before
                    # writing it down, and it may have routed.  Take back the shipment it would
                    # have sent from this warehouse (its id is unique to that plan).
                    wh = reply["warehouse"]
                    sid = shipment_id(reply["order_id"], wh, attempt, plan)
                    fx.requests.append((wh, cancel_request(reply["order_id"], wh, sid, "plan_lost_in_crash", now,
                                                           precautionary=True)))
            return state, fx
        if state is None:
            return state, fx
        oid = state["order_id"]
        if outcome == "shipped":
            if line_id not in state["shipped"]:
                state = {**state, "shipped": [*state["shipped"], line_id]}
                state["holds"] = {k: v for k, v in state["holds"].items() if k != line_id}
                fx.events.append(_event(oid, "line_shipped", now, line_id=line_id, warehouse=reply["warehouse"]))
                if not state["holds"] and state["status"] == ROUTED:
                    state["status"] = SHIPPED
                    fx.events.append(_event(oid, "shipped", now))
            return state, fx
        held_by_plan = this_plan and state["holds"].get(line_id) == [reply["warehouse"], attempt]
        if outcome == "evicted" or (outcome == "refused" and held_by_plan):
            # "refused" for a line this plan holds: the SKU owner has no hold for it any more.  A
            # SKU owner killed while its batch's table writes were on their way reads the batch
            # again on the records that did land, and can then refuse a line it had confirmed
            # (another line took the units first this time).  Its latest word is the truth: the
            # line is lost as if evicted, and the order is re-planned.
            if not held_by_plan:
                return state, fx
            reason = "oversold" if outcome == "evicted" else "reservation_lost"
            # The line's hold stays in the state for the unwind to release: a no-op normally (the
            # SKU owner dropped it), but a SKU owner that read a torn batch again may have evicted
            # another hold this time and still keep this one.
            fx.events.append(_event(oid, reason, now, line_id=line_id, warehouse=reply["warehouse"],
                                    qty=reply.get("qty", 0)))
            state, more = self._unwind(state, now, reason)
            fx.extend(more)
            state, more = self._start_attempt(state, view, now)
            fx.extend(more)
            return state, fx
        if not current:
            return state, fx
        if line_id in state["replies"]:
            return state, fx  # duplicate reply (re-delivery)
        state = {**state, "replies": {**state["replies"], line_id: outcome}}
        if outcome == "confirmed":
            state["holds"] = {**state["holds"], line_id: [reply["warehouse"], attempt]}
        planned = {lid for _, lids in state["plan"] for lid in lids}
        if not planned <= set(state["replies"]):
            return state, fx
        if all(state["replies"][lid] == "confirmed" for lid in planned):
            return self._route(state, now, fx)
        # Some line was refused: release what this attempt holds, then re-plan with a fresher view.
        fx.events.append(_event(oid, "reservation_conflict", now, attempt=attempt,
                                refused=sorted(lid for lid in planned if state["replies"][lid] != "confirmed")))
        state, more = self._release_holds(state, now, "conflict")
        fx.extend(more)
        state, more = self._start_attempt(state, view, now)
        fx.extend(more)
        return state, fx

    @staticmethod
    def _planned(state: dict, line_id: str) -> tuple[str, int] | None:
        """(warehouse, qty) the current plan reserves for ``line_id``.

        A reply counts for the plan only if it answers *this* plan: after a worker crash lost a
        state write, the same attempt number can be planned again differently (the stock view has
        moved), and an answer to the lost plan must not stand in for an answer to this one.
        """
        for wh, lids in state["plan"]:
            if line_id in lids:
                qty = next(int(line["qty"]) for line in state["order"]["lines"] if line["line_id"] == line_id)
                return wh, qty
        return None

    def on_release(self, state: dict, view: StockView, now: str, by: str = "breaker_drain") -> tuple[dict, Effects]:
        """A held order may go on: reserve and route it as usual (once: only a held order moves)."""
        fx = Effects()
        if state["status"] != HELD:
            return state, fx
        oid = state["order_id"]
        fx.events.append(_event(oid, "released_from_review", now, by=by, breaker=state.get("held_by")))
        fx.review.append({"type": "approved" if by != "breaker_drain" else "released", "order_id": oid,
                          "breaker": state.get("held_by"), "by": by, "at": now})
        fx.unheld.append(oid)
        state = {**state, "status": WAITING}
        if self.wants_stock(state["order"]):
            state, more = self._start_attempt(state, view, now)
            fx.extend(more)
        return state, fx

    def on_reject(self, state: dict, now: str, by: str, breaker: str | None = None) -> tuple[dict, Effects]:
        """An operator rejected a held order: it ends cancelled, nothing was reserved.

        An operator can only reject an order the breaker's store holds, so a rejection that finds
        the order on its way (waiting, reserving, routed, backordered) means its hold was lost with
        a stopped worker's batch and the order was read again after the breaker had closed: the
        rejection still stands, and the order is cancelled like a channel cancel (its holds
        released, its shipment requests taken back).  A shipped order stays shipped.
        ``breaker``: the breaker that held it, when the state does not say (an early decision)."""
        fx = Effects()
        if state["status"] not in (HELD, WAITING, RESERVING, ROUTED, BACKORDERED):
            return state, fx
        fx.review.append({"type": "rejected", "order_id": state["order_id"],
                          "breaker": breaker or state.get("held_by"), "by": by, "at": now})
        if state["status"] == HELD:
            fx.unheld.append(state["order_id"])
        return self._cancel(state, now, "rejected_in_review", fx)

    def on_retry(self, state: dict, now: str) -> tuple[dict, Effects]:
        """A reservation waited too long for some replies: ask again for the lines still unanswered.

        Safe to repeat: the SKU owner answers a request it already granted with the same
        confirmation (holds are keyed by order and line), so this only heals a lost message.
        """
        fx = Effects()
        if state["status"] != RESERVING:
            return state, fx
        order = state["order"]
        lines = {line["line_id"]: line for line in order["lines"]}
        for wh, lids in state["plan"]:
            for lid in lids:
                if lid not in state["replies"]:
                    fx.stock_ops.append(self._op("reserve", state["order_id"], lid, lines[lid]["sku"],
                                                 attempt=state["attempt"], warehouse=wh, qty=int(lines[lid]["qty"]),
                                                 paid_at=order.get("paid_at") or order["created_at"],
                                                 plan=state.get("plan_id", "")))
        return {**state, "since": now}, fx

    def on_expiry(self, state: dict, now: str) -> tuple[dict, Effects]:
        """An unpaid order that took stock at order time lapsed without payment."""
        fx = Effects()
        order = state["order"]
        if order["status"] != "pending_payment" or state["status"] in (CANCELLED, SHIPPED):
            return state, fx
        return self._cancel(state, now, "unpaid_expired", fx)

    # -- transitions -----------------------------------------------------------------------------
    def _needs(self, order: dict) -> list[LineNeed]:
        return [LineNeed(line["line_id"], line["sku"], int(line["qty"]), bool(line["gift"])) for line in order["lines"]]

    def _start_attempt(self, state: dict, view: StockView, now: str) -> tuple[dict, Effects]:
        fx = Effects()
        order = state["order"]
        oid = order["order_id"]
        attempt = state["attempt"] + 1
        if attempt > self.network.max_attempts:
            return self._backorder(state, now, "reservation_conflicts", fx)
        plan: Plan = plan_order(self._needs(order), channel=order["channel"],
                                province_code=order["ship_to"]["province_code"], network=self.network,
                                available=view.available, capacity_left=view.capacity_left)
        if not plan.routable:
            state = {**state, "attempt": attempt}
            return self._backorder(state, now, plan.backorder_reason or "insufficient_stock", fx)
        lines = {line["line_id"]: line for line in order["lines"]}
        plan_id = self.plan_ids()
        state = {**state, "status": RESERVING, "attempt": attempt, "plan_id": plan_id, "replies": {}, "since": now,
                 "plans": [*state.get("plans", ()), plan_id][-32:],
                 "plan": [[s.warehouse, list(s.line_ids)] for s in plan.shipments],
                 "omitted_gifts": list(plan.omitted_gifts)}
        for wh, lids in state["plan"]:
            for lid in lids:
                line = lines[lid]
                fx.stock_ops.append(self._op("reserve", oid, lid, line["sku"], attempt=attempt, warehouse=wh,
                                             qty=int(line["qty"]), paid_at=order.get("paid_at") or order["created_at"],
                                             plan=plan_id))
        return state, fx

    def _route(self, state: dict, now: str, fx: Effects) -> tuple[dict, Effects]:
        order = state["order"]
        oid = order["order_id"]
        lines = {line["line_id"]: line for line in order["lines"]}
        priority = self.priority_of(order)
        paid = datetime.fromisoformat((order.get("paid_at") or order["created_at"]).replace("Z", "+00:00"))
        sent = []
        n = len(state["plan"])
        for i, (wh, lids) in enumerate(state["plan"]):
            sid = shipment_id(oid, wh, state["attempt"], state.get("plan_id", ""))
            ship_by = self.warehouses[wh].ship_by(paid).strftime("%Y-%m-%dT%H:%M:%SZ")
            fx.requests.append((wh, {
                "type": "shipment_request", "shipment_id": sid, "order_id": oid,
                "channel": order["channel"], "channel_order_id": order["channel_order_id"], "warehouse": wh,
                "lines": [{"line_id": lid, "sku": lines[lid]["sku"], "qty": lines[lid]["qty"],
                           "gift": lines[lid]["gift"]} for lid in lids],
                "priority": priority, "urgent": bool(order.get("urgent")), "ship_by": ship_by,
                "ship_to": order["ship_to"], "shipment": i + 1, "shipments": n, "requested_at": now,
            }))
            sent.append([wh, sid])
        state = {**state, "status": ROUTED, "sent": sent, "priority": priority}
        whs = [wh for wh, _ in state["plan"]]
        fx.events.append(_event(oid, "reserved", now, attempt=state["attempt"],
                                holds={lid: v[0] for lid, v in state["holds"].items()}))
        fx.events.append(_event(oid, "split" if n > 1 else "routed", now, warehouses=whs, priority=priority,
                                omitted_gifts=state.get("omitted_gifts", [])))
        return state, fx

    def _backorder(self, state: dict, now: str, reason: str, fx: Effects) -> tuple[dict, Effects]:
        state = {**state, "status": BACKORDERED, "plan": [], "replies": {}}
        fx.events.append(_event(state["order_id"], "backordered", now, reason=reason))
        return state, fx

    def _release_holds(self, state: dict, now: str, reason: str) -> tuple[dict, Effects]:
        fx = Effects()
        lines = {line["line_id"]: line for line in state["order"]["lines"]}
        plan = {"plan": state["plan_id"]} if state.get("plan_id") else {}
        for lid, (wh, attempt) in sorted(state["holds"].items()):
            fx.stock_ops.append(self._op("release", state["order_id"], lid, lines[lid]["sku"], attempt=attempt,
                                         warehouse=wh, **plan))
        if state["holds"]:
            fx.events.append(_event(state["order_id"], "released", now, reason=reason, lines=sorted(state["holds"])))
        return {**state, "holds": {}}, fx

    @staticmethod
    def _maybe_sent(state: dict) -> list[list[str]]:
        """Shipment requests the current attempt may have sent although ``state`` does not say so.

        A worker's batch is acknowledged by Kafka before its tables are written (see
        ``agents.common``), so a worker killed in between comes back with the order still
        ``reserving`` while its shipment requests are already with the warehouses.  Re-delivered
        inputs normally route it again (same shipment ids, deduplicated by the WMS), but a cancel
        re-delivered *before* the last confirmation ends the order first.  The route can only have
        happened if no line of this attempt was refused, so then the attempt's shipments are
        cancelled as a precaution (a WMS ignores a cancel for a shipment it never received).
        """
        if state["status"] != RESERVING or any(v != "confirmed" for v in state["replies"].values()):
            return []
        sent = {sid for _, sid in state["sent"]}
        ids = [[wh, shipment_id(state["order_id"], wh, state["attempt"], state.get("plan_id", ""))]
               for wh, _ in state["plan"]]
        return [x for x in ids if x[1] not in sent]

    def _unwind(self, state: dict, now: str, reason: str) -> tuple[dict, Effects]:
        """Take back shipment requests already sent (or possibly sent) and release every hold."""
        fx = Effects()
        for wh, sid in state["sent"]:
            fx.requests.append((wh, cancel_request(state["order_id"], wh, sid, reason, now)))
        for wh, sid in self._maybe_sent(state):
            fx.requests.append((wh, cancel_request(state["order_id"], wh, sid, reason, now, precautionary=True)))
        state, more = self._release_holds({**state, "sent": []}, now, reason)
        fx.extend(more)
        return state, fx

    def _cancel(self, state: dict, now: str, reason: str, fx: Effects) -> tuple[dict, Effects]:
        if state["status"] == CANCELLED:
            return state, fx
        if state["status"] == HELD and state["order_id"] not in fx.unheld:
            fx.unheld.append(state["order_id"])
            fx.review.append({"type": "cancelled", "order_id": state["order_id"], "breaker": state.get("held_by"),
                              "by": "channel", "at": now})
        state, more = self._unwind(state, now, reason)
        fx.extend(more)
        state = {**state, "status": CANCELLED, "plan": [], "replies": {}}
        fx.events.append(_event(state["order_id"], "cancelled", now, reason=reason))
        return state, fx

    @staticmethod
    def _op(op: str, order_id: str, line_id: str, sku: str, **kw: Any) -> dict[str, Any]:
        return {"op": op, "order_id": order_id, "line_id": line_id, "sku": sku, **kw}


@dataclass
class Watchlist:
    """The few orders the timers must look at, kept beside the order-state table as it is written:
    reservations waiting for answers (retried when stale), unpaid orders holding stock (released
    when they expire) and orders held by a breaker (repaired if Redis forgot them).

    Why: the timers used to scan every order in the table every few seconds — fine for a thousand
    orders, a stall of the event loop for the millions a worker holds on a peak day.  The list is
    rebuilt by one scan after a restart or rebalance (``stale``), then kept by :meth:`update`.
    """

    reserving: dict[str, tuple[str, int]] = field(default_factory=dict)  #: order_id -> (since, partition)
    expiring: dict[str, tuple[str, int]] = field(default_factory=dict)  #: order_id -> (expires_at, partition)
    held: dict[str, int] = field(default_factory=dict)  #: order_id -> partition
    stale: bool = True
    stale_since: float = 0.0  #: monotonic time the list went stale

    def update(self, order_id: str, state: dict[str, Any] | None) -> None:
        self.reserving.pop(order_id, None)
        self.expiring.pop(order_id, None)
        self.held.pop(order_id, None)
        if not state:
            return
        status, partition = state.get("status"), state.get("p", 0)
        if status == RESERVING:
            self.reserving[order_id] = (state.get("since") or "9999", partition)  # no start time: never stale
        elif status == HELD:
            self.held[order_id] = partition
        order = state.get("order") or {}
        if order.get("expires_at") and order.get("status") == "pending_payment" and status in (RESERVING, ROUTED):
            self.expiring[order_id] = (order["expires_at"], partition)

    def mark_stale(self, now: float) -> None:
        self.stale, self.stale_since = True, now

    def ensure(self, table: Any, *, recovered: bool = False, in_recovery: bool = False, now: float = 0.0,
               settle_s: float = 5.0) -> bool:
        """Rebuild from ``table`` if a restart or rebalance made the list stale and the table is
        whole again: ``recovered`` (the agents call this from a batch they act on, and they act
        only with the tables settled: agents.common.owned_events), or — for timers, which also
        tick during recovery — not ``in_recovery`` and at least ``settle_s`` after going stale.
        Returns whether the list is usable."""
        if self.stale and (recovered or (not in_recovery and now - self.stale_since >= settle_s)):
            self.rebuild(list(table.items()))
        return not self.stale

    def rebuild(self, states: Any) -> None:
        """One scan of ``(order_id, state)`` pairs (the table after recovery)."""
        self.reserving.clear()
        self.expiring.clear()
        self.held.clear()
        for order_id, state in states:
            self.update(order_id, state)
        self.stale = False

    def due(self, now: str, stale_before: str) -> list[tuple[int, dict[str, str]]]:
        """(partition, control message) for every reservation waiting since before ``stale_before``
        (ask again) and every unpaid order whose expiry is before ``now`` (release its stock)."""
        out = [(p, {"outcome": "retry", "order_id": oid})
               for oid, (since, p) in self.reserving.items() if since < stale_before]
        out += [(p, {"outcome": "expire", "order_id": oid}) for oid, (exp, p) in self.expiring.items() if exp < now]
        return out
