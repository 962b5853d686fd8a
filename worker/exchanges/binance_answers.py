"""Binance spot's JSON answers read as the port's values: orders, OCO lists, trades, and a
symbol's filters from exchangeInfo. Pure: no I/O. An answer that cannot be read raises
OutcomeUnknown (see :func:`parsed`): a 2xx we cannot read means we do not know what happened.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, TypeVar

from worker.exchanges.base import (
    ExchangeFill,
    OrderState,
    OutcomeUnknown,
    SymbolRules,
)
from worker.exchanges.filters import rules_from_symbol_info, unknown_symbol

T = TypeVar("T")

symbol_rules = rules_from_symbol_info  # an exchangeInfo symbol, read as every adapter reads it


def parsed(parse: Callable[[Mapping[str, Any]], T], body: Any) -> T:
    """A 2xx answer we cannot read means we do not know what happened."""
    try:
        return parse(body)
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise OutcomeUnknown(f"unreadable answer: {type(exc).__name__}: {exc}") from exc


def order_state(data: Mapping[str, Any]) -> OrderState:
    """An order answer (POST FULL, GET, DELETE) as an OrderState; DELETE names the original id
    ``origClientOrderId`` (its ``clientOrderId`` is the cancel's own id)."""
    time_ms = int(data.get("transactTime") or data.get("updateTime") or data.get("time") or 0)
    fills = tuple(
        ExchangeFill(
            trade_id=str(f["tradeId"]),
            price=Decimal(str(f["price"])),
            qty=Decimal(str(f["qty"])),
            commission=Decimal(str(f["commission"])),
            commission_asset=str(f["commissionAsset"]),
            time_ms=time_ms,
        )
        for f in data.get("fills", ())
    )
    return OrderState(
        client_order_id=str(data.get("origClientOrderId") or data["clientOrderId"]),
        exchange_order_id=str(data["orderId"]),
        status=str(data["status"]),
        executed_qty=Decimal(str(data["executedQty"])),
        cumulative_quote=Decimal(str(data["cummulativeQuoteQty"])),
        fills=fills,
        raw=dict(data),
    )


def open_order_states(body: Any) -> list[OrderState]:
    """A ``GET /api/v3/openOrders`` answer: a list of orders."""
    if not isinstance(body, list):
        raise TypeError(f"openOrders answered {type(body).__name__}, not a list")
    return [order_state(o) for o in body]


def oco_states(data: Mapping[str, Any]) -> tuple[OrderState, ...]:
    """The legs of an order list answer (``orderReports``), as OrderStates."""
    reports = data["orderReports"]
    if not isinstance(reports, list) or len(reports) != 2:
        raise ValueError(f"an OCO answer has two orderReports, got {reports!r}")
    return tuple(order_state(r) for r in reports)


def trade_page(body: Any) -> list[ExchangeFill]:
    if not isinstance(body, list):
        raise TypeError(f"myTrades answered {type(body).__name__}, not a list")
    return [trade_fill(t) for t in body]


def trade_fill(trade: Mapping[str, Any]) -> ExchangeFill:
    """One entry of ``GET /api/v3/myTrades``."""
    return ExchangeFill(
        trade_id=str(trade["id"]),
        price=Decimal(str(trade["price"])),
        qty=Decimal(str(trade["qty"])),
        commission=Decimal(str(trade["commission"])),
        commission_asset=str(trade["commissionAsset"]),
        time_ms=int(trade["time"]),
    )


_BUDGET_WINDOWS = {"REQUEST_WEIGHT": ("MINUTE", 1), "ORDERS": ("SECOND", 10)}


def rate_limit(payload: Mapping[str, Any], kind: str) -> int | None:
    """exchangeInfo's ``rateLimits`` entry the budget reads: REQUEST_WEIGHT per minute, or
    ORDERS per 10 seconds; None when the answer has none."""
    interval, num = _BUDGET_WINDOWS[kind]
    for limit in payload.get("rateLimits", ()):
        if (limit.get("rateLimitType"), limit.get("interval")) == (kind, interval) and int(
            limit.get("intervalNum", 0)
        ) == num:
            return int(limit["limit"])
    return None


def rules_from_exchange_info(payload: Mapping[str, Any], symbol: str) -> SymbolRules:
    """Find ``symbol`` in an exchangeInfo response; OrderRejected(-1121) when absent."""
    for info in payload.get("symbols", ()):
        if info.get("symbol") == symbol:
            return symbol_rules(info)
    raise unknown_symbol(symbol)
