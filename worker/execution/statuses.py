"""Order and position statuses, pure: what the exchange's status word means for an order,
the legal moves between two statuses, and where a position goes once one of its orders
settled. No I/O."""

from __future__ import annotations

from collections import deque
from decimal import Decimal
from typing import Final

from worker.lifecycle import ORDER_TRANSITIONS, POSITION_TRANSITIONS

FINAL_ORDER: Final = ("filled", "cancelled", "failed")
LIVE_ORDER: Final = ("created", "submitted", "partially_filled")
LIVE_POSITION: Final = ("open", "monitoring")  # entered, not closing: requests and protection
FINAL_POSITION: Final = ("closed", "failed")


LOST: Final = "LOST"  # our word for an acknowledged order the exchange no longer knows
LOST_ERROR: Final = "lost:"  # how the error message of a lost order begins


def order_status_for(exchange_status: str, executed: Decimal) -> str:
    """Our order status for the exchange's status word (or :data:`LOST`)."""
    if exchange_status == "FILLED":
        return "filled"
    if exchange_status in ("CANCELED", "EXPIRED", "EXPIRED_IN_MATCH", "PENDING_CANCEL", LOST):
        return "cancelled"
    if exchange_status == "REJECTED":
        return "failed" if executed == 0 else "cancelled"
    if exchange_status == "PARTIALLY_FILLED" or executed > 0:
        return "partially_filled"
    return "submitted"


def order_lost(status: str, missing_for_s: float | None, window_s: float) -> bool:
    """An order the exchange acknowledged (``submitted`` or ``partially_filled``: it was
    seen there) that every lookup for ``missing_for_s`` seconds answered "Order does not
    exist." (-2013) is lost once that lasts ``window_s``: the exchange forgot it (the spot
    testnet's periodic reset). It is not looked up again."""
    acknowledged = status in ("submitted", "partially_filled")
    return acknowledged and missing_for_s is not None and missing_for_s >= window_s


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
    if order_status not in FINAL_ORDER:
        return None
    if purpose == "entry" and position_status == "submitting":
        return "open" if executed > 0 else "failed"
    if purpose == "exit" and position_status == "closing":
        return "closed" if flat else "open"
    if purpose in ("stop_loss", "take_profit") and executed > 0 and flat:
        return "closed" if position_status in ("open", "monitoring", "closing") else None
    return None
