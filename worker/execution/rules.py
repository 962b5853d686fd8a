"""Execution decisions as plain functions: client ids, order statuses, what a fill does to a
position, protective stops, entry validation. Pure: no I/O, no clock."""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, Final, Literal

from worker.exchanges.filters import SymbolRules, round_price
from worker.lifecycle import ORDER_TRANSITIONS, POSITION_TRANSITIONS

Purpose = Literal["entry", "exit", "scale_in", "scale_out", "stop_loss", "take_profit"]
_CODES: Final = {
    "entry": "e",
    "exit": "x",
    "scale_in": "i",
    "scale_out": "o",
    "stop_loss": "s",
    "take_profit": "t",
}
FINAL_EXCHANGE = {"FILLED", "CANCELED", "EXPIRED", "EXPIRED_IN_MATCH", "REJECTED"}
FINAL_ORDER: Final = ("filled", "cancelled", "failed")
PROTECTIVE: Final = ("stop_loss", "take_profit")
HOLDING: Final = ("entry", "scale_in", "scale_out", "exit")  # orders changing the holding
LIVE_ORDER: Final = ("created", "submitted", "partially_filled")


def client_order_id(order_id: uuid.UUID | str, purpose: str) -> str:
    """The client order id of the worker's order row ``order_id``: ``pw-<purpose code><the
    row's uuid in 32 hex digits>``, 36 characters (Binance allows ``^[a-zA-Z0-9-_]{1,36}$``).

    Unique by construction: the uuid is the row's primary key, drawn by the worker
    (``uuid4``), never by whoever else may write ``orders`` or ``positions``. The same intent
    always gets the same id: the row is committed before the order is sent, so a retry after
    a crash looks the order up by this id before ever sending it again.
    """
    return f"pw-{_CODES[purpose]}{uuid.UUID(str(order_id)).hex}"


def oco_list_id(stop_order_id: uuid.UUID | str) -> str:
    """The client id of the OCO list whose stop leg is the order row ``stop_order_id``:
    ``pw-l<the stop leg's uuid in 32 hex digits>`` (one list per stop leg; ``l`` is no
    purpose code, so a list id never equals an order's id), 36 characters."""
    return f"pw-l{uuid.UUID(str(stop_order_id)).hex}"


def is_worker_order(order_id: uuid.UUID | str, purpose: str, client_id: str | None) -> bool:
    """Whether an order row is the worker's own: its client id is exactly the one
    :func:`client_order_id` gives a row of this id and purpose. Any other row (a user's
    record without a client id, a row written by hand or forged) is never sent, cancelled,
    driven, counted in a position's figures or taken as an OCO partner. The SQL twin of this
    test is the ``own`` CTE of ``worker/db/execution.sql``."""
    if purpose not in _CODES or not isinstance(client_id, str):
        return False
    try:
        return client_id == client_order_id(order_id, purpose)
    except ValueError:  # not a uuid
        return False


def order_status_for(exchange_status: str, executed: Decimal) -> str:
    """Our order status for the exchange's status word."""
    if exchange_status == "FILLED":
        return "filled"
    if exchange_status in ("CANCELED", "EXPIRED", "EXPIRED_IN_MATCH", "PENDING_CANCEL"):
        return "cancelled"
    if exchange_status == "REJECTED":
        return "failed" if executed == 0 else "cancelled"
    if exchange_status == "PARTIALLY_FILLED" or executed > 0:
        return "partially_filled"
    return "submitted"


def path(transitions: dict[str, frozenset[str]], current: str, target: str) -> list[str]:
    """The shortest chain of legal moves from ``current`` to ``target`` (excluding current);
    empty when already there or when ``target`` cannot be reached."""
    if current == target:
        return []
    previous: dict[str, str] = {current: current}
    queue = deque([current])
    while queue:
        state = queue.popleft()
        for nxt in sorted(transitions.get(state, frozenset())):
            if nxt not in previous:
                previous[nxt] = state
                queue.append(nxt)
    if target not in previous:
        return []
    chain = [target]
    while previous[chain[-1]] != current:
        chain.append(previous[chain[-1]])
    return chain[::-1]


def order_path(current: str, target: str) -> list[str]:
    return path(ORDER_TRANSITIONS, current, target)


def position_path(current: str, target: str) -> list[str]:
    return path(POSITION_TRANSITIONS, current, target)


def position_target(
    position_status: str, purpose: str, order_status: str, executed: Decimal, flat: bool
) -> str | None:
    """Where a position goes once one of its orders reached ``order_status``, or None."""
    final = order_status in ("filled", "cancelled", "failed")
    if not final:
        return None
    if purpose == "entry" and position_status == "submitting":
        return "open" if executed > 0 else "failed"
    if purpose == "exit" and position_status == "closing":
        return "closed" if flat else "open"
    if purpose in ("stop_loss", "take_profit") and executed > 0 and flat:
        return "closed" if position_status in ("open", "monitoring", "closing") else None
    return None


def protection_plan(
    orders: Sequence[Mapping[str, Any]],
    stop_loss: Decimal | None,
    take_profit: Decimal | None,
    quantity: Decimal | None = None,
) -> tuple[list[Mapping[str, Any]], list[str]]:
    """What a live position's exchange-side protection needs, from its orders (oldest first).

    Protection belongs to the holding it was placed for: the one left by the latest entry,
    scale or exit order. Returns

    * the protective orders still working that were placed for an earlier holding (to
      cancel: a scale changed the size), and
    * the kinds the position asks for (a stop-loss and/or take-profit price) with no live
      order placed since that change (to place): never placed (a crash), cancelled for an
      exit that then failed, cancelled or expired on the exchange. A kind whose latest
      order since the change was rejected at this very ``quantity`` and price is left out:
      it would only be rejected again (it is tried again once the holding or price moves).
    """
    last = max((i for i, o in enumerate(orders) if o["purpose"] in HOLDING), default=-1)
    if last < 0:
        return [], []  # nothing entered through the engine: nothing of ours to protect
    stale = [o for o in orders[:last] if o["purpose"] in PROTECTIVE and o["status"] in LIVE_ORDER]
    missing = []
    for purpose, stop in (("stop_loss", stop_loss), ("take_profit", take_profit)):
        own = [o for o in orders[last + 1 :] if o["purpose"] == purpose]
        if stop is None or any(o["status"] in LIVE_ORDER for o in own):
            continue
        if own and _rejected_at(own[-1], quantity, stop):
            continue
        missing.append(purpose)
    return stale, missing


def oco_partner(
    orders: Sequence[Mapping[str, Any]], order: Mapping[str, Any]
) -> Mapping[str, Any] | None:
    """The other leg of an OCO pair ``order`` (a protective order) belongs to, or None.

    The engine creates both legs of a pair in one transaction, so they share
    ``created_at`` (``now()`` is the transaction's start); a single stop-loss or take-profit
    is created in a transaction of its own. The pair: the other protective kind, same
    ``created_at``, same quantity."""
    if order["purpose"] not in PROTECTIVE:
        return None
    other = "take_profit" if order["purpose"] == "stop_loss" else "stop_loss"
    return next(
        (
            o
            for o in orders
            if o["purpose"] == other
            and o["id"] != order["id"]
            and o["created_at"] == order["created_at"]
            and o["quantity"] == order["quantity"]
        ),
        None,
    )


def _rejected_at(order: Mapping[str, Any], quantity: Decimal | None, stop: Decimal) -> bool:
    same_size = quantity is None or order.get("quantity") == quantity
    return order["status"] == "failed" and same_size and order.get("stop_price") == stop


def effective_stop(
    side: str,
    stop_loss: Decimal | None,
    max_loss: Decimal | None,
    avg_cost: Decimal,
    held: Decimal,
) -> Decimal | None:
    """The tighter of the stop-loss price and the price at which the loss reaches
    ``max_loss_usdt`` (avg_cost is break-even per unit, incl. entry fees)."""
    candidates = [stop_loss] if stop_loss is not None else []
    if max_loss is not None and held > 0:
        per_unit = max_loss / held
        candidates.append(avg_cost - per_unit if side == "long" else avg_cost + per_unit)
    candidates = [c for c in candidates if c is not None and c > 0]
    if not candidates:
        return None
    return max(candidates) if side == "long" else min(candidates)


def protection_trigger(
    side: str, price: Decimal, stop: Decimal | None, take_profit: Decimal | None
) -> str | None:
    """``stop_loss`` / ``take_profit`` when ``price`` crossed one of them, else None."""
    if side == "long":
        if stop is not None and price <= stop:
            return "stop_loss"
        if take_profit is not None and price >= take_profit:
            return "take_profit"
        return None
    if stop is not None and price >= stop:
        return "stop_loss"
    if take_profit is not None and price <= take_profit:
        return "take_profit"
    return None


def entry_problem(
    side: str,
    price: Decimal,
    *,
    quantity: Decimal | None,
    quote: Decimal | None,
    stop_loss: Decimal | None,
    take_profit: Decimal | None,
) -> str | None:
    """Why an entry must be refused before it reaches the exchange, or None."""
    if (quantity is None) == (quote is None):
        return "give exactly one of requested_quantity or requested_quote"
    below, above = ("stop-loss", "take-profit") if side == "long" else ("take-profit", "stop-loss")
    low = stop_loss if side == "long" else take_profit
    high = take_profit if side == "long" else stop_loss
    if low is not None and low >= price:
        return f"{below} {low} is not below the current price {price} for a {side}"
    if high is not None and high <= price:
        return f"{above} {high} is not above the current price {price} for a {side}"
    return None


def exit_side(position_side: str) -> str:
    return "sell" if position_side == "long" else "buy"


def entry_side(position_side: str) -> str:
    return "buy" if position_side == "long" else "sell"


def stop_price(position: Mapping[str, Any], rules: SymbolRules | None) -> Decimal | None:
    """The exchange-side stop of a live position: the tighter of ``stop_loss_price`` and the
    price at which the loss reaches ``max_loss_usdt`` (on the average entry price, as the
    paper watcher computes it), rounded to the tick size towards the market (so the loss
    stays within the limit). None when neither is set."""
    held = position["held_quantity"] or Decimal(0)
    entered = position["entry_quantity"]
    avg = position["entry_value"] / entered if entered else None
    if avg is None:
        stop_loss: Decimal | None = position["stop_loss_price"]
        return stop_loss
    stop = effective_stop(
        position["side"], position["stop_loss_price"], position["max_loss_usdt"], avg, held
    )
    if stop is None or rules is None or stop == position["stop_loss_price"]:
        return stop
    towards_market = ROUND_CEILING if position["side"] == "long" else ROUND_FLOOR
    return round_price(rules, stop, towards_market)
