"""The REST routes of the fake Binance: weight, security and handler of each (rest-api.md).

Each handler gets a :class:`Call` (the server, the signed-in account or None, the merged
parameters, the fault armed for the request) and returns the JSON answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from worker.testing.fake_binance.accounts import FakeAccount
from worker.testing.fake_binance.faults import Fault
from worker.testing.fake_binance.market import Market
from worker.testing.fake_binance.orders import ApiError, Order, f8


class FakeBinance(Protocol):
    """What the handlers use of the server."""

    market: Market

    def now_ms(self) -> int: ...

    def depth_qty(self, symbol: str) -> Decimal: ...


@dataclass
class Call:
    fake: FakeBinance
    account: FakeAccount | None
    params: dict[str, str]
    fault: Fault | None

    @property
    def me(self) -> FakeAccount:
        assert self.account is not None
        return self.account


Weight = Callable[[Mapping[str, str]], int]


@dataclass(frozen=True)
class Route:
    handler: Callable[[Call], Any]
    weight: Weight
    signed: bool = False
    orders: int = 0  # "Unfilled Order Count" of a success


def _const(n: int) -> Weight:
    return lambda p: n


def _by_symbol(one: int, every: int) -> Weight:
    return lambda p: one if "symbol" in p else every


def _depth_weight(p: Mapping[str, str]) -> int:
    """rest-api.md "Order book": 5, 25, 50 or 250 by ``limit`` (default 100)."""
    limit = int(p.get("limit") or 100)
    return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250


def _symbols(call: Call) -> list[str]:
    """``symbol=X`` or ``symbols=["X","Y"]`` (a JSON array), else every symbol; -1121."""
    market = call.fake.market
    if "symbol" in call.params and "symbols" in call.params:
        raise ApiError(400, -1128, "Combination of optional parameters invalid.")
    if "symbol" in call.params:
        names = [call.params["symbol"]]
    elif "symbols" in call.params:
        try:
            names = [str(s) for s in json.loads(call.params["symbols"])]
        except ValueError:
            raise ApiError(400, -1100, "Illegal characters found in parameter 'symbols'.") from None
    else:
        return list(market.symbols)
    for name in names:
        if name not in market.symbols:
            raise ApiError(400, -1121, "Invalid symbol.")
    return names


def _one_or_all(call: Call, row: Callable[[str], dict[str, Any]]) -> Any:
    rows = [row(s) for s in _symbols(call)]
    return rows[0] if "symbol" in call.params else rows


# -- general and market data ----------------------------------------------------------------


def exchange_info(call: Call) -> Any:
    info = call.fake.market.exchange_info
    wanted = set(_symbols(call))
    info["symbols"] = [s for s in info["symbols"] if s["symbol"] in wanted]
    return {"timezone": "UTC", "serverTime": call.fake.now_ms(), **info}


def ticker_price(call: Call) -> Any:
    prices = call.fake.market.prices
    return _one_or_all(call, lambda s: {"symbol": s, "price": f8(prices[s])})


def _tick(call: Call, symbol: str) -> Decimal:
    return call.fake.market.specs[symbol].tick


def book_ticker(call: Call) -> Any:
    """The fake's book is one price: best bid a tick below it, best ask a tick above."""

    def row(s: str) -> dict[str, Any]:
        price, tick, qty = call.fake.market.prices[s], _tick(call, s), call.fake.depth_qty(s)
        return {"symbol": s, "bidPrice": f8(price - tick), "bidQty": f8(qty),
                "askPrice": f8(price + tick), "askQty": f8(qty)}  # fmt: skip

    return _one_or_all(call, row)


def ticker_24hr(call: Call) -> Any:
    """rest-api.md "24hr ticker price change statistics" (FULL): the fake has no history,
    so the day opened, and stayed, at the last price."""
    now = call.fake.now_ms()

    def row(s: str) -> dict[str, Any]:
        p, tick, qty = call.fake.market.prices[s], _tick(call, s), call.fake.depth_qty(s)
        return {
            "symbol": s, "priceChange": f8(Decimal(0)), "priceChangePercent": "0.000",
            "weightedAvgPrice": f8(p), "prevClosePrice": f8(p), "lastPrice": f8(p),
            "lastQty": f8(Decimal(0)), "bidPrice": f8(p - tick), "bidQty": f8(qty),
            "askPrice": f8(p + tick), "askQty": f8(qty), "openPrice": f8(p), "highPrice": f8(p),
            "lowPrice": f8(p), "volume": f8(Decimal(0)), "quoteVolume": f8(Decimal(0)),
            "openTime": now - 86_400_000, "closeTime": now, "firstId": -1, "lastId": -1,
            "count": 0,
        }  # fmt: skip

    return _one_or_all(call, row)


def depth(call: Call) -> Any:
    """rest-api.md "Order book": one level each side of the last price (the fake's book)."""
    symbol = _symbols(call)[0] if "symbol" in call.params else None
    if symbol is None:
        raise ApiError(
            400, -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
        )
    price, tick = call.fake.market.prices[symbol], _tick(call, symbol)
    qty = f8(call.fake.depth_qty(symbol))
    return {
        "lastUpdateId": call.fake.now_ms(),
        "bids": [[f8(price - tick), qty]],
        "asks": [[f8(price + tick), qty]],
    }


# -- account ---------------------------------------------------------------------------------


def account(call: Call) -> Any:
    """rest-api.md "Account information"."""
    book = call.me.book
    balances = book.balances or {}
    omit = call.params.get("omitZeroBalances") == "true"
    rows = [
        {"asset": a, "free": f8(v - book.locked(a)), "locked": f8(book.locked(a))}
        for a, v in sorted(balances.items())
        if not (omit and v == 0)
    ]
    return {
        "makerCommission": 10, "takerCommission": 10, "buyerCommission": 0,
        "sellerCommission": 0,
        "commissionRates": {"maker": "0.00100000", "taker": "0.00100000",
                            "buyer": "0.00000000", "seller": "0.00000000"},
        "canTrade": True, "canWithdraw": True, "canDeposit": True, "brokered": False,
        "requireSelfTradePrevention": False, "preventSor": False,
        "updateTime": call.fake.now_ms(), "accountType": "SPOT", "balances": rows,
        "permissions": ["SPOT"], "uid": abs(hash(call.me.name)) % 10**9,
    }  # fmt: skip


def _order_id_given(p: Mapping[str, str]) -> None:
    if not p.get("orderId") and not p.get("origClientOrderId"):
        raise ApiError(
            400,
            -1102,
            "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!",
        )


def _existing(call: Call, *, lookup: bool) -> Order:
    book = call.me.book
    book.spec(call.params.get("symbol"))
    _order_id_given(call.params)
    order = book.find(call.params, lookup=lookup)
    if order is None:
        raise ApiError(400, -2013, "Order does not exist.")
    return order


def query_order(call: Call) -> Any:
    return _existing(call, lookup=True).json()


def new_order(call: Call) -> Any:
    order, fills = call.me.book.place(call.params)
    order.hidden_lookups = call.fault.lookups if call.fault else 0
    default = "FULL" if order.type in ("MARKET", "LIMIT") else "ACK"
    return order.response(call.params.get("newOrderRespType") or default, fills)


def test_order(call: Call) -> Any:
    """rest-api.md "Test new order": validated, not placed (no balance check: that is the
    matching engine's)."""
    book = call.me.book
    spec = book.spec(call.params.get("symbol"))
    book.check_filters(spec, [book.new_order(spec, call.params)])
    if call.params.get("computeCommissionRates") == "true":
        rate = f8(call.fake.market.commission_rate)
        zero = {"maker": f8(None), "taker": f8(None)}
        return {
            "standardCommissionForOrder": {"maker": rate, "taker": rate},
            "specialCommissionForOrder": zero, "taxCommissionForOrder": zero,
            "discount": {"enabledForAccount": False, "enabledForSymbol": False,
                         "discountAsset": "BNB", "discount": "0.00000000"},
        }  # fmt: skip
    return {}


def cancel_order(call: Call) -> Any:
    book = call.me.book
    book.spec(call.params.get("symbol"))
    _order_id_given(call.params)
    order = book.find(call.params, lookup=False)
    if order is None or not order.is_open:
        raise ApiError(400, -2011, "Unknown order sent.")
    return _cancel(call, order, call.params.get("newClientOrderId"))


def _cancel(call: Call, order: Order, cancel_id: str | None) -> dict[str, Any]:
    order.status, order.update_ms = "CANCELED", call.fake.now_ms()
    call.me.book.end_list(order, "CANCELED")  # cancelling one leg cancels the whole list
    return order.cancel_json(cancel_id or f"cancel{order.order_id}", order.update_ms)


def open_orders(call: Call) -> Any:
    if "symbol" in call.params:
        call.me.book.spec(call.params["symbol"])
    wanted = call.params.get("symbol")
    return [o.json() for o in call.me.book.orders if o.is_open and wanted in (None, o.symbol)]


def cancel_open_orders(call: Call) -> Any:
    """rest-api.md "Cancel All Open Orders on a Symbol" (order lists included)."""
    symbol = call.params.get("symbol")
    call.me.book.spec(symbol)
    live = [o for o in call.me.book.orders if o.is_open and o.symbol == symbol]
    if not live:
        raise ApiError(400, -2011, "Unknown order sent.")  # not documented: what Binance sends
    return [_cancel(call, o, None) for o in live if o.is_open]


def all_orders(call: Call) -> Any:
    """rest-api.md "All orders": orderId >= ``orderId`` when sent, at most ``limit``
    (default 500, max 1000), oldest first."""
    symbol = call.params.get("symbol")
    call.me.book.spec(symbol)
    rows = [o for o in call.me.book.orders if o.symbol == symbol]
    if call.params.get("orderId"):
        rows = [o for o in rows if o.order_id >= int(call.params["orderId"])]
        limit = min(int(call.params.get("limit") or 500), 1000)
        return [o.json() for o in rows[:limit]]
    limit = min(int(call.params.get("limit") or 500), 1000)
    return [o.json() for o in rows[-limit:]]


def my_trades(call: Call) -> Any:
    return call.me.book.my_trades(call.params)
