"""Stop-loss / take-profit decisions, pure: which protective orders a live position needs,
which two rows are one OCO list, the stop price, and when a price triggers a stop. No I/O
(placing, restoring and cancelling the orders: ``protection.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Final

from worker.exchanges.filters import SymbolRules, round_price
from worker.execution.rows import Order, Position
from worker.execution.statuses import LIVE_ORDER

PROTECTIVE: Final = ("stop_loss", "take_profit")
HOLDING: Final = ("entry", "scale_in", "scale_out", "exit")  # orders changing the holding


def protection_plan(
    orders: Sequence[Order],
    stop_loss: Decimal | None,
    take_profit: Decimal | None,
    quantity: Decimal | None = None,
) -> tuple[list[Order], list[str]]:
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
    last = max((i for i, o in enumerate(orders) if o.purpose in HOLDING), default=-1)
    if last < 0:
        return [], []  # nothing entered through the engine: nothing of ours to protect
    stale = [o for o in orders[:last] if o.purpose in PROTECTIVE and o.status in LIVE_ORDER]
    missing = []
    for purpose, stop in (("stop_loss", stop_loss), ("take_profit", take_profit)):
        own = [o for o in orders[last + 1 :] if o.purpose == purpose]
        if stop is None or any(o.status in LIVE_ORDER for o in own):
            continue
        if own and _rejected_at(own[-1], quantity, stop):
            continue
        missing.append(purpose)
    return stale, missing


def oco_partner(orders: Sequence[Order], order: Order) -> Order | None:
    """The other leg of an OCO pair ``order`` (a protective order) belongs to, or None.

    The engine creates both legs of a pair in one transaction, so they share
    ``created_at`` (``now()`` is the transaction's start); a single stop-loss or take-profit
    is created in a transaction of its own. The pair: the other protective kind, same
    ``created_at``, same quantity."""
    if order.purpose not in PROTECTIVE:
        return None
    other = "take_profit" if order.purpose == "stop_loss" else "stop_loss"
    return next(
        (
            o
            for o in orders
            if o.purpose == other
            and o.id != order.id
            and o.created_at == order.created_at
            and o.quantity == order.quantity
        ),
        None,
    )


def _rejected_at(order: Order, quantity: Decimal | None, stop: Decimal) -> bool:
    same_size = quantity is None or order.quantity == quantity
    return order.status == "failed" and same_size and order.stop_price == stop


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


def stop_price(position: Position, rules: SymbolRules | None) -> Decimal | None:
    """The exchange-side stop of a live position: the tighter of ``stop_loss_price`` and the
    price at which the loss reaches ``max_loss_usdt`` (on the average entry price, as the
    paper watcher computes it), rounded to the tick size towards the market (so the loss
    stays within the limit). None when neither is set."""
    held = position.held_quantity or Decimal(0)
    entered = position.entry_quantity
    if not entered or position.entry_value is None:
        return position.stop_loss_price
    avg = position.entry_value / entered
    stop = effective_stop(
        position.side, position.stop_loss_price, position.max_loss_usdt, avg, held
    )
    if stop is None or rules is None or stop == position.stop_loss_price:
        return stop
    towards_market = ROUND_CEILING if position.side == "long" else ROUND_FLOOR
    return round_price(rules, stop, towards_market)
