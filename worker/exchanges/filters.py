"""A symbol's trading rules (Binance's exchangeInfo filters), read from exchangeInfo's JSON by
the one parser every adapter shares (:func:`rules_from_symbol_info`: the live client, the
paper exchange and its shipped snapshot), and the pure rounding and pre-checks on them, no I/O.

An order that breaks a filter fails here, before anything is sent, with a reason a person can
read ("quantity 0.00000900 below minQty 0.00001000"), instead of a bare -1013 from Binance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Any

from worker.exchanges.errors import FilterViolation, OrderRejected

ZERO = Decimal(0)


@dataclass(frozen=True)
class SymbolRules:
    """The trading rules of one symbol. A zero size or limit means "no rule".

    ``max_algo_orders`` / ``max_order_lists``: filters.md MAX_NUM_ALGO_ORDERS (open
    STOP_LOSS, STOP_LOSS_LIMIT, TAKE_PROFIT, TAKE_PROFIT_LIMIT orders an account may have
    on the symbol) and MAX_NUM_ORDER_LISTS (open order lists, an OCO counting one)."""

    symbol: str
    base_asset: str
    quote_asset: str
    tick_size: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: Decimal
    max_algo_orders: int = 0
    max_order_lists: int = 0


def rules_from_symbol_info(info: Mapping[str, Any]) -> SymbolRules:
    """One entry of exchangeInfo's ``symbols`` list: PRICE_FILTER's tickSize, LOT_SIZE's
    stepSize/minQty/maxQty, NOTIONAL's minNotional (MIN_NOTIONAL on older answers), and the
    MAX_NUM_ALGO_ORDERS / MAX_NUM_ORDER_LISTS caps.
    A filter the answer lacks reads as "no rule" (zero)."""
    filters = {f["filterType"]: f for f in info.get("filters", ())}
    price = filters.get("PRICE_FILTER", {})
    lot = filters.get("LOT_SIZE", {})
    notional = filters.get("NOTIONAL") or filters.get("MIN_NOTIONAL") or {}
    return SymbolRules(
        symbol=str(info["symbol"]),
        base_asset=str(info["baseAsset"]),
        quote_asset=str(info["quoteAsset"]),
        tick_size=_dec(price.get("tickSize")),
        step_size=_dec(lot.get("stepSize")),
        min_qty=_dec(lot.get("minQty")),
        max_qty=_dec(lot.get("maxQty")),
        min_notional=_dec(notional.get("minNotional")),
        max_algo_orders=int(filters.get("MAX_NUM_ALGO_ORDERS", {}).get("maxNumAlgoOrders", 0)),
        max_order_lists=int(filters.get("MAX_NUM_ORDER_LISTS", {}).get("maxNumOrderLists", 0)),
    )


def unknown_symbol(symbol: str) -> OrderRejected:
    """The error Binance gives for a symbol it does not list, word for word (errors.md:
    -1121 BAD_SYMBOL, "Invalid symbol."), live or on paper. The engine names the symbol."""
    return OrderRejected(-1121, "Invalid symbol.")


def _dec(value: Any) -> Decimal:
    return ZERO if value is None else Decimal(str(value))


def round_quantity(rules: SymbolRules, quantity: Decimal) -> Decimal:
    """Floor ``quantity`` to a multiple of stepSize (never sell or buy more than asked)."""
    return _to_multiple(quantity, rules.step_size, ROUND_DOWN)


def round_price(rules: SymbolRules, price: Decimal, rounding: str = ROUND_HALF_UP) -> Decimal:
    """Round ``price`` to the nearest multiple of tickSize (or as ``rounding`` says)."""
    return _to_multiple(price, rules.tick_size, rounding)


def _to_multiple(value: Decimal, unit: Decimal, rounding: str) -> Decimal:
    if unit <= 0:
        return value
    grid = unit.normalize()
    units = (value / grid).to_integral_value(rounding=rounding)
    return (units * grid).quantize(grid)


def check_order(
    rules: SymbolRules,
    quantity: Decimal | None,
    price: Decimal | None,
    *,
    quote_quantity: Decimal | None = None,
) -> None:
    """Raise FilterViolation if the order would break a filter. ``price=None``: no notional."""
    if quantity is not None:
        _check_quantity(rules, quantity)
    if price is not None:
        _check_price(rules, price)
    if quote_quantity is not None:
        _check_quote(rules, quote_quantity)
    elif quantity is not None and price is not None:
        notional = quantity * price
        if notional < rules.min_notional:
            raise FilterViolation(
                f"{rules.symbol} notional {_n(notional)} ({_n(quantity)} x {_n(price)}) "
                f"below minNotional {_n(rules.min_notional)}"
            )


def _check_quantity(rules: SymbolRules, quantity: Decimal) -> None:
    if quantity < 0 or (quantity == 0 and rules.min_qty <= 0):
        raise FilterViolation(f"{rules.symbol} quantity must be positive, got {_n(quantity)}")
    _at_least(rules, "quantity", quantity, "minQty", rules.min_qty)
    if rules.max_qty > 0 and quantity > rules.max_qty:
        raise FilterViolation(
            f"{rules.symbol} quantity {_n(quantity)} above maxQty {_n(rules.max_qty)}"
        )
    _on_grid(rules, "quantity", quantity, "", rules.step_size)


def _check_price(rules: SymbolRules, price: Decimal) -> None:
    _positive(rules, "price", price)
    _on_grid(rules, "price", price, "tickSize ", rules.tick_size)


def _check_quote(rules: SymbolRules, quote: Decimal) -> None:
    _positive(rules, "quote quantity", quote)
    _at_least(rules, "quote quantity", quote, "minNotional", rules.min_notional)


def _positive(rules: SymbolRules, what: str, value: Decimal) -> None:
    if value <= 0:
        raise FilterViolation(f"{rules.symbol} {what} must be positive, got {_n(value)}")


def _at_least(rules: SymbolRules, what: str, value: Decimal, name: str, least: Decimal) -> None:
    if value < least:
        raise FilterViolation(f"{rules.symbol} {what} {_n(value)} below {name} {_n(least)}")


def _on_grid(rules: SymbolRules, what: str, value: Decimal, name: str, unit: Decimal) -> None:
    """``value`` is a multiple of ``unit`` (named ``name`` in the message), if one is set."""
    if unit > 0 and value % unit != 0:
        raise FilterViolation(
            f"{rules.symbol} {what} {_n(value)} not a multiple of {name}{_n(unit)}"
        )


def format_decimal(value: Decimal) -> str:
    """Plain notation for the wire: ``1E+1`` -> ``10``, ``1E-5`` -> ``0.00001``."""
    return format(value, "f")


def _n(value: Decimal) -> str:
    """A Decimal for a message: no trailing zeros, no exponent."""
    return format(value.normalize(), "f")
