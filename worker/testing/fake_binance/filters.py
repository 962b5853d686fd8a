"""Symbol and exchange filters, as filters.md defines them, for an order about to be placed.

Every filter present in the symbol's exchangeInfo ``filters`` (and in ``exchangeFilters``)
is enforced; a filter that is absent is not. A failure is errors.md "Filter failures":
-1013 ``Filter failure: <filterType>``. Where filters.md speaks of the "average of previous
trade prices" (PERCENT_PRICE*, MARKET notional) the fake uses its one last price: it keeps
no trade history, which the docs allow for ``avgPriceMins`` 0 only (a simplification).
Real Binance's order of evaluation is not documented; here it is filters.md's order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import ROUND_CEILING, Decimal
from typing import Any

from worker.testing.fake_binance.orders import ApiError, Order

ALGO_TYPES = frozenset({"STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"})


class Context:
    """What the filters need to know about the account and the market."""

    def __init__(
        self,
        last_price: Decimal,
        open_orders: Sequence[Order],
        base_position: Decimal,
    ) -> None:
        self.last_price = last_price
        self.open_orders = open_orders  # the account's open orders, every symbol
        self.base_position = base_position  # free + locked of the base asset


def fail(name: str) -> ApiError:
    return ApiError(400, -1013, f"Filter failure: {name}")


def check_orders(
    info: Mapping[str, Any],
    exchange_filters: Iterable[Mapping[str, Any]],
    new: Sequence[Order],
    ctx: Context,
) -> None:
    """Check the orders of one request (one order, or the legs of an order list)."""
    for order in new:
        for f in info.get("filters", ()):
            check = _SYMBOL_CHECKS.get(f["filterType"])
            if check is not None:
                check(f, order, ctx)
    for f in info.get("filters", ()):
        _count_check(f, new, [o for o in ctx.open_orders if o.symbol == info["symbol"]])
        if f["filterType"] == "MAX_NUM_ORDER_LISTS" and len(new) > 1:
            _list_count_check(f, [o for o in ctx.open_orders if o.symbol == info["symbol"]])
    for f in exchange_filters:
        _count_check(f, new, list(ctx.open_orders))
    for f in info.get("filters", ()):
        if f["filterType"] == "MAX_POSITION":
            _max_position(f, new, ctx)


def _d(value: Any) -> Decimal:
    return Decimal(str(value))


def _price_filter(f: Mapping[str, Any], order: Order, ctx: Context) -> None:
    """filters.md PRICE_FILTER: on ``price`` and ``stopPrice``; a 0 disables its rule."""
    lo, hi, tick = _d(f["minPrice"]), _d(f["maxPrice"]), _d(f["tickSize"])
    for price in (order.price, order.stop_price):
        if price is None:
            continue
        if (lo and price < lo) or (hi and price > hi) or (tick and price % tick) or price <= 0:
            raise fail("PRICE_FILTER")


def _percent_price(f: Mapping[str, Any], order: Order, ctx: Context) -> None:
    """filters.md PERCENT_PRICE: ``price`` within the multipliers of the average price."""
    if order.price is not None:
        up, down = _d(f["multiplierUp"]), _d(f["multiplierDown"])
        if not ctx.last_price * down <= order.price <= ctx.last_price * up:
            raise fail("PERCENT_PRICE")


def _percent_price_by_side(f: Mapping[str, Any], order: Order, ctx: Context) -> None:
    """filters.md PERCENT_PRICE_BY_SIDE: bid multipliers for BUY, ask for SELL. The
    failure message is the filter's name (errors.md lists PERCENT_PRICE only; ccxt's
    binance map knows "Filter failure: PERCENT_PRICE_BY_SIDE" from real answers)."""
    if order.price is not None:
        side = "bid" if order.side == "BUY" else "ask"
        up, down = _d(f[f"{side}MultiplierUp"]), _d(f[f"{side}MultiplierDown"])
        if not ctx.last_price * down <= order.price <= ctx.last_price * up:
            raise fail("PERCENT_PRICE_BY_SIDE")


def _lot(name: str, f: Mapping[str, Any], qty: Decimal) -> None:
    lo, hi, step = _d(f["minQty"]), _d(f["maxQty"]), _d(f["stepSize"])
    # a stepSize of 0 (real MARKET_LOT_SIZE entries carry one) has no interval to follow
    if qty < lo or (hi and qty > hi) or (step and qty % step):
        raise fail(name)


def _lot_size(f: Mapping[str, Any], order: Order, ctx: Context) -> None:
    """filters.md LOT_SIZE: ``quantity`` and ``icebergQty``."""
    _lot("LOT_SIZE", f, order.orig_qty)
    if order.iceberg_qty:
        _lot("LOT_SIZE", f, order.iceberg_qty)


def _market_lot_size(f: Mapping[str, Any], order: Order, ctx: Context) -> None:
    """filters.md MARKET_LOT_SIZE: ``quantity`` of MARKET orders."""
    if order.type == "MARKET":
        _lot("MARKET_LOT_SIZE", f, order.orig_qty)


def _reference(order: Order, ctx: Context) -> Decimal:
    return order.price or order.stop_price or ctx.last_price


def _min_notional(f: Mapping[str, Any], order: Order, ctx: Context) -> None:
    """filters.md MIN_NOTIONAL: MARKET orders only with ``applyToMarket``."""
    if order.type == "MARKET" and not f.get("applyToMarket", True):
        return
    if _reference(order, ctx) * order.orig_qty < _d(f["minNotional"]):
        raise fail("MIN_NOTIONAL")


def _notional(f: Mapping[str, Any], order: Order, ctx: Context) -> None:
    """filters.md NOTIONAL: min/max; for MARKET orders per applyMin/MaxToMarket. (A stop
    order without ``price`` is valued at its ``stopPrice``: not documented.)"""
    value = _reference(order, ctx) * order.orig_qty
    market = order.type == "MARKET"
    if (not market or f.get("applyMinToMarket", True)) and value < _d(f["minNotional"]):
        raise fail("NOTIONAL")
    if (not market or f.get("applyMaxToMarket", False)) and value > _d(f["maxNotional"]):
        raise fail("NOTIONAL")


def _iceberg_parts(f: Mapping[str, Any], order: Order, ctx: Context) -> None:
    """filters.md ICEBERG_PARTS: ``CEIL(qty / icebergQty)`` parts at most ``limit``."""
    if order.iceberg_qty:
        parts = (order.orig_qty / order.iceberg_qty).to_integral_value(ROUND_CEILING)
        if parts > int(f["limit"]):
            raise fail("ICEBERG_PARTS")


_SYMBOL_CHECKS: dict[str, Callable[[Mapping[str, Any], Order, Context], None]] = {
    "PRICE_FILTER": _price_filter,
    "PERCENT_PRICE": _percent_price,
    "PERCENT_PRICE_BY_SIDE": _percent_price_by_side,
    "LOT_SIZE": _lot_size,
    "MIN_NOTIONAL": _min_notional,
    "NOTIONAL": _notional,
    "ICEBERG_PARTS": _iceberg_parts,
    "MARKET_LOT_SIZE": _market_lot_size,
}

# filters.md MAX_NUM_* / EXCHANGE_MAX_NUM_*: (field, which open orders count)
_COUNTS: dict[str, tuple[str, Callable[[Order], bool]]] = {
    "MAX_NUM_ORDERS": ("maxNumOrders", lambda o: True),
    "MAX_NUM_ALGO_ORDERS": ("maxNumAlgoOrders", lambda o: o.type in ALGO_TYPES),
    "MAX_NUM_ICEBERG_ORDERS": ("maxNumIcebergOrders", lambda o: bool(o.iceberg_qty)),
    "EXCHANGE_MAX_NUM_ORDERS": ("maxNumOrders", lambda o: True),
    "EXCHANGE_MAX_NUM_ALGO_ORDERS": ("maxNumAlgoOrders", lambda o: o.type in ALGO_TYPES),
    "EXCHANGE_MAX_NUM_ICEBERG_ORDERS": ("maxNumIcebergOrders", lambda o: bool(o.iceberg_qty)),
}


def _count_check(f: Mapping[str, Any], new: Sequence[Order], open_orders: list[Order]) -> None:
    """ "Maximum number of orders an account is allowed to have open": the open ones plus
    the new ones may not exceed it (an OCO's two algo legs take two algo slots)."""
    rule = _COUNTS.get(f["filterType"])
    if rule is None:
        return
    field, counts = rule
    if sum(map(counts, open_orders)) + sum(map(counts, new)) > int(f[field]):
        raise fail(f["filterType"])


def _list_count_check(f: Mapping[str, Any], open_orders: list[Order]) -> None:
    """filters.md MAX_NUM_ORDER_LISTS: "the maximum number of open order lists an account
    can have on a symbol"; the new list (an OCO) is one more."""
    lists = {o.order_list_id for o in open_orders if o.order_list_id >= 0}
    if len(lists) + 1 > int(f["maxNumOrderLists"]):
        raise fail("MAX_NUM_ORDER_LISTS")


def _max_position(f: Mapping[str, Any], new: Sequence[Order], ctx: Context) -> None:
    """filters.md MAX_POSITION: BUY orders fail when base balance (free + locked) plus the
    open BUY orders' quantity plus this order's would exceed ``maxPosition``."""
    buys = [o for o in new if o.side == "BUY"]
    if not buys:
        return
    open_buys = sum(
        (o.remaining for o in ctx.open_orders if o.side == "BUY" and o.symbol == buys[0].symbol),
        Decimal(0),
    )
    if ctx.base_position + open_buys + max(o.orig_qty for o in buys) > _d(f["maxPosition"]):
        raise fail("MAX_POSITION")
