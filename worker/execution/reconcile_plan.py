"""The REST safety net's decisions, pure: which ``openOrders`` calls a pass makes for one
account, and which of the worker's orders in flight still need a lookup of their own.

Binance weighs ``GET /api/v3/openOrders`` 6 for one symbol and 80 without a symbol
(rest-api.md "Current open orders"), ``GET /api/v3/order`` 4 ("Query order"). One list of
an account's open orders per symbol and pass replaces a lookup per order: an order listed
open as the database has it needs nothing; only an order that left the list (filled,
cancelled, expired, or forgotten by the exchange), or that the list shows changed, is
looked up. The paper book is listed the same way, as one account. Between listings only
what changed is read and driven (:func:`next_full_read`). What is driven goes in turns
across users (the watcher, with ``worker.pipeline.turns``). No I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from worker.exchanges.base import OrderState
from worker.execution.statuses import order_status_for

OPEN_ORDERS_WEIGHT: Final = 6  # one symbol
OPEN_ORDERS_ALL_WEIGHT: Final = 80  # every symbol of the account
ORDER_WEIGHT: Final = 4


@dataclass(frozen=True, slots=True)
class InFlight:
    """One of the worker's orders not final, as the safety net sees it."""

    position_id: str
    user_id: str
    client_order_id: str
    symbol: str
    status: str
    exchange_status: str | None
    filled_quantity: Decimal
    missing_lookups: int


def open_orders_calls(symbols: Collection[str]) -> list[str | None]:
    """The ``openOrders`` calls covering ``symbols`` for one account at the least weight:
    one per symbol, or one without a symbol (None) once that weighs less."""
    calls: list[str | None] = [None]
    if len(symbols) * OPEN_ORDERS_WEIGHT <= OPEN_ORDERS_ALL_WEIGHT:
        calls = [*sorted(symbols)]
    return calls


def due(last_checked: float | None, now: float, interval: float) -> bool:
    """Whether an account's open orders are listed again this pass."""
    return last_checked is None or now - last_checked >= interval


def next_full_read(now: float, due_at: Iterable[float], interval: float) -> float:
    """When a pass next reads every order in flight, rather than only the orders still to be
    sent (and the paper orders the paper book's matching moved): as soon as one of the
    accounts with orders in flight is due for its listing (``due_at``: each one's time; now
    for an account that cannot list, whose orders are looked up one by one every pass, or
    whose listing failed), or ``interval`` from now when no order is in flight. Between
    listings an order already at an exchange is driven only once something says it changed,
    so reading it would be wasted: a pass costs what changed, and the resting orders are
    read once per listing, with the list they are compared with."""
    return min(due_at, default=now + interval)


def needs_lookup(order: InFlight, listed: Mapping[str, OrderState] | None) -> bool:
    """Whether ``order`` is driven (looked up, sent) this pass. ``listed``: the account's
    open orders on the symbol by client order id, or None when they were not listed this
    pass (not due, or the list failed): then only an order still to be sent is driven."""
    if order.status == "created":
        return True  # to send, or to find after a send whose outcome is unknown
    if listed is None:
        return False  # looked at again at the next listing
    state = listed.get(order.client_order_id)
    if state is None or order.missing_lookups > 0:
        return True  # left the open list: filled, cancelled, expired or forgotten
    recorded = order_status_for(state.status, state.executed_qty) == order.status
    return not (
        recorded
        and state.status == order.exchange_status
        and state.executed_qty == order.filled_quantity
    )
