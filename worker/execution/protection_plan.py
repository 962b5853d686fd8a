"""Stop-loss / take-profit decisions, pure: which protective orders a live position needs,
which two rows are one OCO list, whether the exchange has room for them (its per-symbol
caps on open algo orders and order lists) or the worker protects the position instead, the
stop price, and when a price triggers a stop. No I/O (placing, restoring and cancelling
the orders: ``protection.py``; the worker-side watch: ``watcher.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Final, Literal

from worker.exchanges.base import Side as OrderSide
from worker.exchanges.filters import SymbolRules, round_price
from worker.execution.rows import Order, Position
from worker.execution.statuses import LIVE_ORDER

Mode = Literal["exchange", "worker"]
# errors.md "Filter failures": the caps on open orders per symbol and account
CAP_FILTERS: Final = ("MAX_NUM_ALGO_ORDERS", "MAX_NUM_ORDER_LISTS")

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


@dataclass(frozen=True, slots=True)
class Slots:
    """One account's open algo orders and order lists on one symbol (as the worker counts
    them: its own live protective orders), and the caps (None: no cap). filters.md: "Algo"
    orders are STOP_LOSS, STOP_LOSS_LIMIT, TAKE_PROFIT and TAKE_PROFIT_LIMIT (a LIMIT_MAKER
    is not one); an OCO is one order list."""

    algo_in_use: int
    lists_in_use: int
    max_algo: int | None
    max_lists: int | None

    def free(self) -> tuple[int | None, int | None]:
        """Free algo slots and list slots (None: no cap)."""
        algo = None if self.max_algo is None else self.max_algo - self.algo_in_use
        lists = None if self.max_lists is None else self.max_lists - self.lists_in_use
        return algo, lists


def slots_of(algo: int, lists: int, rules: SymbolRules, refused_at: Slots | None = None) -> Slots:
    """The slots in use against the caps of exchangeInfo (0 there: no cap), lowered to
    what was in use when the exchange last refused for want of room (``refused_at``): the
    exchange counts orders the worker does not (the user's own, another program's)."""
    caps = [rules.max_algo_orders or None, rules.max_order_lists or None]
    if refused_at is not None:
        learnt = [refused_at.max_algo, refused_at.max_lists]
        caps = [_tighter(cap, more) for cap, more in zip(caps, learnt, strict=True)]
    return Slots(algo, lists, caps[0], caps[1])


def refusal_caps(algo: int, lists: int, msg: str) -> Slots:
    """What a refusal for want of room teaches: the cap it names is what was in use."""
    if "MAX_NUM_ORDER_LISTS" in msg:
        return Slots(algo, lists, None, lists)
    return Slots(algo, lists, algo, None)


def _tighter(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where ``kinds`` go: on the exchange (the take-profit leg of an OCO as LIMIT_MAKER
    when ``maker_take_profit``: it takes no algo slot), or watched by the worker, why."""

    mode: Mode
    maker_take_profit: bool = False
    reason: str = ""


def placement(kinds: Sequence[str], exit_side: OrderSide, slots: Slots) -> Placement:
    """Whether the exchange has room for the protective orders of ``kinds``.

    Both kinds go as one OCO list: one list slot and two algo slots, or one when the
    take-profit leg can be a LIMIT_MAKER (rest-api.md "New Order list - OCO": ``aboveType``
    accepts LIMIT_MAKER, ``belowType`` does not; the take-profit is the above leg of a
    SELL, so only a long position's exit). That leg is used only where it saves the slot
    the list would otherwise miss: a TAKE_PROFIT fills at market once triggered, a
    LIMIT_MAKER rests at its price. One kind alone is one algo order."""
    algo, lists = slots.free()
    if len(kinds) >= 2:
        if lists is not None and lists < 1:
            return Placement("worker", reason=_full("MAX_NUM_ORDER_LISTS", slots.max_lists))
        if algo is None or algo >= 2:
            return Placement("exchange")
        if algo == 1 and exit_side == "sell":
            return Placement("exchange", maker_take_profit=True)
        return Placement("worker", reason=_full("MAX_NUM_ALGO_ORDERS", slots.max_algo))
    if algo is not None and algo < 1:
        return Placement("worker", reason=_full("MAX_NUM_ALGO_ORDERS", slots.max_algo))
    return Placement("exchange")


def _full(name: str, cap: int | None) -> str:
    return f"no room on the exchange: {name} ({cap} open on the symbol) reached"


def is_cap_rejection(code: int | None, msg: str) -> bool:
    """An order refused for one of the caps on open orders (errors.md "Filter failures":
    "Filter failure: MAX_NUM_ALGO_ORDERS", "... MAX_NUM_ORDER_LISTS", and their
    EXCHANGE_ forms): nothing is wrong with the order, the account has no room for it."""
    return code in (-1013, -2010) and any(name in msg for name in CAP_FILTERS)


def protection_state(
    orders: Sequence[Order], stop_loss: Decimal | None, take_profit: Decimal | None
) -> Mode | None:
    """Where a live position's protection stands, from its orders (oldest first), once
    nothing is left to place: ``exchange`` when, for every kind with a price, a live order
    placed since the latest holding change was acknowledged by the exchange; ``worker``
    when a kind with a price has no live order since (refused, or not placed for want of
    room); None while an order is still on its way (or nothing is asked for)."""
    last = max((i for i, o in enumerate(orders) if o.purpose in HOLDING), default=-1)
    asked = [k for k, price in (("stop_loss", stop_loss), ("take_profit", take_profit)) if price]
    if last < 0 or not asked:
        return None
    since = orders[last + 1 :]
    states = set()
    for purpose in asked:
        live = [o for o in since if o.purpose == purpose and o.status in LIVE_ORDER]
        if not live:
            return "worker"
        states.add("exchange" if any(o.status != "created" for o in live) else None)
    return "exchange" if states == {"exchange"} else None
