"""The matching engine of the fake Binance: placing, resting, triggering, filling, fees.

Written independently of the real client's filter code, so a bug there is not mirrored here.
Not thread-safe on its own: the server calls it under one lock.

Over 300 lines on purpose: one matching engine (placing, resting, triggering, filling,
fees) whose state must change under one lock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import ROUND_DOWN, Decimal
from typing import Any

from worker.testing.fake_binance.filters import Context, check_orders
from worker.testing.fake_binance.market import CommissionMode, Market
from worker.testing.fake_binance.orders import (
    CLIENT_ID,
    EIGHT,
    ORDER_TYPES,
    TIME_IN_FORCE,
    ApiError,
    Order,
    Spec,
    Trade,
)

__all__ = ["Book", "CommissionMode"]

MAX_TRADES_LIMIT = 1000  # myTrades: larger limits are served as 1000


def _triggered(side: str, kind: str, stop: Decimal, price: Decimal) -> bool:
    """STOP_LOSS: sell when price falls to stop, buy when it rises; TAKE_PROFIT: the reverse."""
    falling = (side == "SELL") == kind.startswith("STOP_LOSS")
    return price <= stop if falling else price >= stop


def _crosses(side: str, limit: Decimal, price: Decimal) -> bool:
    return price <= limit if side == "BUY" else price >= limit


class Book:
    """Orders, trades, prices and balances of one fake account."""

    def __init__(self, market: Market, clock_ms: Callable[[], int]) -> None:
        self.market = market
        self.clock_ms = clock_ms
        self.orders: list[Order] = []
        self.trades: list[Trade] = []
        self.balances: dict[str, Decimal] | None = None
        # with balances: what open orders need is locked (free = balance - locked), as on
        # Binance, so a second full-size SELL of the same holding is refused with -2010
        self.lock_balances = True
        self.trades_lag = 0  # new trades stay out of myTrades for this many of its answers
        self.unsettled: dict[int, int] = {}  # trade id -> myTrades answers still to miss it
        self.list_client_ids: dict[int, str] = {}  # orderListId -> listClientOrderId

    def reset(self) -> None:
        """The spot testnet's periodic reset: orders, trades and balances forgotten."""
        self.orders, self.trades, self.unsettled, self.list_client_ids = [], [], {}, {}
        if self.balances is not None:
            self.balances = {}

    # -- lookups -------------------------------------------------------------------------------

    def spec(self, symbol: str | None) -> Spec:
        if symbol not in self.market.specs:
            raise ApiError(400, -1121, "Invalid symbol.")
        return self.market.specs[symbol]

    def find(self, p: Mapping[str, str], *, lookup: bool) -> Order | None:
        """Latest order matching orderId / origClientOrderId; a lookup may be hidden."""
        found = [
            o
            for o in self.orders
            if o.symbol == p.get("symbol")
            and (str(o.order_id) == p.get("orderId") or o.client_id == p.get("origClientOrderId"))
        ]
        if not found:
            return None
        order = found[-1]
        if lookup and order.hidden_lookups > 0:
            order.hidden_lookups -= 1
            return None
        return order

    def my_trades(self, p: Mapping[str, str]) -> list[dict[str, Any]]:
        """Binance's paging: at most ``limit`` (default 500, at most 1000) trades, oldest
        first; with ``fromId`` those with id >= fromId, without it the most recent ones."""
        self.spec(p.get("symbol"))
        limit = min(_int_param(p, "limit", 500), MAX_TRADES_LIMIT)
        if limit < 1:
            raise ApiError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        rows = sorted(
            (t for t in self.trades if t.symbol == p["symbol"] and t.id not in self.unsettled),
            key=lambda t: t.id,
        )
        if "orderId" in p:
            rows = [t for t in rows if str(t.order_id) == p["orderId"]]
        if "fromId" in p:
            from_id = _int_param(p, "fromId", 0)
            page = [t for t in rows if t.id >= from_id][:limit]
        else:
            page = rows[-limit:]
        self._age_unsettled()
        return [t.my_trade_json() for t in page]

    def _age_unsettled(self) -> None:
        """Each myTrades answer brings lagging trades one answer closer to being listed."""
        for trade_id in list(self.unsettled):
            self.unsettled[trade_id] -= 1
            if self.unsettled[trade_id] <= 0:
                del self.unsettled[trade_id]

    # -- placing -------------------------------------------------------------------------------

    def place(self, p: Mapping[str, str]) -> tuple[Order, list[Trade]]:
        """Validate like Binance (rest-api.md "New order"), create the order, match it at
        once if it can. A FOK order that cannot fill at once, or an IOC order's rest, ends
        EXPIRED (enums.md "Time in force"); a LIMIT_MAKER order that would take is refused."""
        spec = self.spec(p.get("symbol"))
        order = self.new_order(spec, p)
        self.check_filters(spec, [order])
        price = self.market.prices[spec.symbol]
        if order.stop_price is not None and _triggered(
            order.side, order.type, order.stop_price, price
        ):
            raise ApiError(400, -2010, "Order would trigger immediately.")
        if order.type == "LIMIT_MAKER" and order.price and _crosses(order.side, order.price, price):
            raise ApiError(400, -2010, "Order would immediately match and take.")
        self._check_balance(spec, order)
        self.orders.append(order)
        if order.time_in_force == "FOK" and not self._fills_completely(order, price):
            order.status = "EXPIRED"  # fill or kill: nothing filled
            return order, []
        fills = self._match(order, price, placing=True)
        if order.time_in_force in ("IOC", "FOK") and order.is_open:
            order.status = "EXPIRED"  # immediate or cancel: the rest expires
        return order, fills

    def _fills_completely(self, order: Order, price: Decimal) -> bool:
        if order.price is not None and not _crosses(order.side, order.price, price):
            return False
        liquidity = self.market.liquidity.get(order.symbol)
        return liquidity is None or liquidity >= order.orig_qty

    def new_order(self, spec: Spec, p: Mapping[str, str]) -> Order:
        side, kind = p.get("side", ""), p.get("type", "")
        _mandatory(p, "side", "type")
        if side not in ("BUY", "SELL"):
            raise ApiError(400, -1117, "Invalid side.")
        if kind not in ORDER_TYPES:
            raise ApiError(400, -1116, "Invalid orderType.")
        info = self.market.symbols[spec.symbol]
        _symbol_allows(info, kind, p)
        client_id = self._client_id(p)
        quote = _dec(p.get("quoteOrderQty"), "quoteOrderQty")
        qty = self._quantity(spec, p, kind, quote)
        price, stop = _dec(p.get("price"), "price"), _dec(p.get("stopPrice"), "stopPrice")
        _require(price, "price", kind.endswith("LIMIT") or kind == "LIMIT_MAKER")
        _require(stop, "stopPrice", kind not in ("MARKET", "LIMIT", "LIMIT_MAKER"))
        now = self.clock_ms()
        order = Order(next(self.market.order_ids), client_id, spec.symbol, side, kind, qty,
                      price, stop, quote, now, update_ms=now)  # fmt: skip
        order.time_in_force = _time_in_force(p, kind)
        order.iceberg_qty = _dec(p.get("icebergQty"), "icebergQty")
        order.stp_mode = p.get("selfTradePreventionMode") or info.get(
            "defaultSelfTradePreventionMode", "NONE"
        )
        if order.stp_mode not in info.get("allowedSelfTradePreventionModes", ("NONE",)):
            raise ApiError(
                400, -1130, "Data sent for parameter 'selfTradePreventionMode' is not valid."
            )
        return order

    def _client_id(self, p: Mapping[str, str]) -> str:
        """Binance's rule: a client id is unique among *open* orders only."""
        client_id = p.get("newClientOrderId") or f"fake{next(self.market.order_ids)}"
        if not CLIENT_ID.match(client_id):
            raise ApiError(400, -1100, "Illegal characters found in parameter 'newClientOrderId'.")
        if any(o.is_open and o.client_id == client_id for o in self.orders):
            raise ApiError(400, -2010, "Duplicate order sent.")
        return client_id

    def _quantity(self, spec: Spec, p: Mapping[str, str], kind: str,
                  quote: Decimal | None) -> Decimal:  # fmt: skip
        qty = _dec(p.get("quantity"), "quantity")
        if qty is not None and quote is not None:
            raise ApiError(400, -1106, "Parameter 'quoteOrderQty' sent when not required.")
        if quote is not None and kind != "MARKET":
            raise ApiError(400, -1106, "Parameter 'quoteOrderQty' sent when not required.")
        if qty is None and quote is not None:  # spend (or receive) `quote` at the price
            units = (quote / self.market.prices[spec.symbol] / spec.step).to_integral_value(
                ROUND_DOWN
            )
            qty = units * spec.step
        if qty is None and kind == "MARKET":
            raise ApiError(
                400,
                -1102,
                "Param 'quantity' or 'quoteOrderQty' must be sent, but both were empty/null!",
            )
        if qty is None:
            raise _missing("quantity")
        return qty

    def check_filters(self, spec: Spec, new: list[Order]) -> None:
        """filters.md, over the symbol's and the exchange's filters (see :mod:`.filters`)."""
        balances = self.balances or {}
        ctx = Context(
            self.market.prices[spec.symbol],
            [o for o in self.orders if o.is_open],
            balances.get(spec.base, Decimal(0)),
        )
        check_orders(self.market.symbols[spec.symbol], self.market.exchange_filters, new, ctx)

    def _check_balance(self, spec: Spec, order: Order) -> None:
        if self.balances is None:
            return
        if order.side == "BUY":
            asset = spec.quote
            need = order.orig_qty * (
                order.price or order.stop_price or self.market.prices[spec.symbol]
            )
        else:
            asset, need = spec.base, order.orig_qty
        if self.balances.get(asset, Decimal(0)) - self.locked(asset) < need:
            raise ApiError(400, -2010, "Account has insufficient balance for requested action.")

    def locked(self, asset: str) -> Decimal:
        """What the open orders hold of ``asset`` (0 unless :attr:`lock_balances`): a SELL
        its unfilled base quantity, a resting BUY its unfilled quantity at its limit (or
        stop) price; an order list locks once, for its largest leg."""
        if not self.lock_balances:
            return Decimal(0)
        held: dict[int, Decimal] = {}  # by order list (or by order, -id, when not in one)
        for o in self.orders:
            if not o.is_open:
                continue
            spec = self.market.specs[o.symbol]
            if o.side == "SELL" and spec.base == asset:
                need = o.remaining
            elif o.side == "BUY" and spec.quote == asset and (o.price or o.stop_price):
                need = o.remaining * (o.price or o.stop_price or Decimal(0))
            else:
                continue
            key = o.order_list_id if o.order_list_id >= 0 else -o.order_id
            held[key] = max(held.get(key, Decimal(0)), need)
        return sum(held.values(), Decimal(0))

    # -- order lists (OCO) ---------------------------------------------------------------------

    def place_oco(self, p: Mapping[str, str]) -> tuple[int, list[Order]]:
        """rest-api.md "New Order list - OCO": two linked legs, above and below. SELL:
        above LIMIT_MAKER/TAKE_PROFIT(_LIMIT), below STOP_LOSS(_LIMIT); BUY: above
        STOP_LOSS(_LIMIT), below TAKE_PROFIT(_LIMIT) (``belowType`` has no LIMIT_MAKER).
        Neither leg may trigger or take at once; the balance is locked once for the list."""
        spec = self.spec(p.get("symbol"))
        _mandatory(p, "side", "quantity", "aboveType", "belowType")
        side = p.get("side", "")
        if side not in ("BUY", "SELL"):
            raise ApiError(400, -1117, "Invalid side.")
        if not self.market.symbols[spec.symbol].get("ocoAllowed", True):
            raise ApiError(400, -2010, "OCO orders are not supported for this symbol")
        take = ("LIMIT_MAKER", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT")
        stop = ("STOP_LOSS", "STOP_LOSS_LIMIT")
        allowed = (
            {"above": take, "below": stop} if side == "SELL" else {"above": stop, "below": take[1:]}
        )
        legs = [self._oco_leg(spec, p, side, where, allowed[where]) for where in ("above", "below")]
        if legs[0].client_id == legs[1].client_id:
            raise ApiError(400, -2010, "Duplicate order sent.")
        self.check_filters(spec, legs)
        last = self.market.prices[spec.symbol]
        for leg in legs:
            takes = leg.type == "LIMIT_MAKER" and _crosses(side, leg.price or last, last)
            if takes or (
                leg.stop_price is not None and _triggered(side, leg.type, leg.stop_price, last)
            ):
                raise ApiError(
                    400, -2010, "The relationship of the prices for the orders is not correct."
                )
        for leg in legs:
            self._check_balance(spec, leg)
        list_id = next(self.market.list_ids)
        for leg in legs:
            leg.order_list_id = list_id
            self.orders.append(leg)
        return list_id, legs

    def _oco_leg(
        self, spec: Spec, p: Mapping[str, str], side: str, where: str, allowed: tuple[str, ...]
    ) -> Order:
        kind = p.get(f"{where}Type", "")
        if kind not in allowed:
            raise ApiError(400, -1116, "Invalid orderType.")
        leg_params = {"symbol": spec.symbol, "side": side, "type": kind, "quantity": p["quantity"]}
        if p.get(f"{where}ClientOrderId"):
            leg_params["newClientOrderId"] = p[f"{where}ClientOrderId"]
        for name in ("Price", "StopPrice", "TimeInForce", "IcebergQty", "TrailingDelta"):
            if f"{where}{name}" in p:
                leg_params[name[0].lower() + name[1:]] = p[f"{where}{name}"]
        if "selfTradePreventionMode" in p:
            leg_params["selfTradePreventionMode"] = p["selfTradePreventionMode"]
        return self.new_order(spec, leg_params)

    def end_list(self, order: Order, status: str) -> None:
        """End the open legs of ``order``'s list other than ``order`` itself."""
        if order.order_list_id < 0:
            return
        for other in self.orders:
            if other is not order and other.order_list_id == order.order_list_id and other.is_open:
                other.status, other.update_ms = status, self.clock_ms()

    # -- matching ------------------------------------------------------------------------------

    def set_price(self, symbol: str, price: Decimal) -> list[Trade]:
        """Move the market; resting orders that trigger or cross fill now."""
        self.spec(symbol)
        self.market.prices[symbol] = price
        made: list[Trade] = []
        for order in [o for o in self.orders if o.symbol == symbol and o.is_open]:
            if order.is_open:  # an OCO leg's sibling that triggered ends it
                made += self._match(order, price, placing=False)
        return made

    def _match(self, order: Order, price: Decimal, *, placing: bool) -> list[Trade]:
        if order.stop_price is not None and not order.triggered:
            if not _triggered(order.side, order.type, order.stop_price, price):
                return []
            order.triggered = True
            self.end_list(order, "EXPIRED")  # Binance expires the other leg of an OCO
        if order.price is None:  # market (or triggered stop-market): fill now, expire the rest
            return self._take(order, price)
        if not _crosses(order.side, order.price, price):
            return []
        if placing:  # crosses the book at once: taker, at the market's (better) price
            return self._take(order, price)
        return self._execute(order, order.price, maker=True)  # resting order hit at its limit

    def _take(self, order: Order, price: Decimal) -> list[Trade]:
        """Taker execution. Armed self-trade prevention (:attr:`in_match`) fills that much,
        then the order meets the account's own resting order and expires EXPIRED_IN_MATCH;
        a market order that runs out of liquidity ends EXPIRED."""
        stp_after = self.market.in_match.pop(order.symbol, None)
        trades = self._execute(order, price, maker=False, cap=stp_after)
        if stp_after is not None and order.remaining > 0:
            order.status = "EXPIRED_IN_MATCH"
        elif order.price is None and order.remaining > 0:
            order.status = "EXPIRED"
        return trades

    def fill_now(self, order: Order) -> list[Trade]:
        """Fill an open order completely, as if the market touched it this instant: a cancel
        race. At its limit price; a stop-market not yet triggered at its stop price; else
        at the market price."""
        price = order.price
        if price is None and order.stop_price is not None and not order.triggered:
            price = order.stop_price
        order.triggered = True
        return self._execute(
            order,
            price or self.market.prices[order.symbol],
            maker=order.price is not None,
            unlimited=True,
        )

    def _execute(
        self,
        order: Order,
        price: Decimal,
        *,
        maker: bool,
        unlimited: bool = False,
        cap: Decimal | None = None,
    ) -> list[Trade]:
        spec = self.market.specs[order.symbol]
        liquidity = None if unlimited else self.market.liquidity.get(order.symbol)
        qty = min(c for c in (order.remaining, liquidity, cap) if c is not None)
        trades = []
        for i, part in enumerate(_split(qty, self.market.partial_fills, spec.step)):
            step = self.market.fill_price_step * i
            trades.append(
                self._trade(
                    order, spec, price + step if order.side == "BUY" else price - step, part, maker
                )
            )
        order.update_ms = self.clock_ms()
        if trades:
            self.end_list(order, "EXPIRED")
        if order.remaining == 0:
            order.status = "FILLED"
        elif order.executed > 0:
            order.status = "PARTIALLY_FILLED"
        return trades

    def _trade(self, order: Order, spec: Spec, price: Decimal, qty: Decimal, maker: bool) -> Trade:
        commission, asset = self._commission(spec, order.side, price, qty)
        trade = Trade(
            next(self.market.trade_ids),
            order.order_id,
            spec.symbol,
            order.side == "BUY",
            maker,
            price,
            qty,
            commission,
            asset,
            self.clock_ms(),
        )
        order.executed += qty
        order.cum_quote += price * qty
        order.trades.append(trade)
        self.trades.append(trade)
        if self.trades_lag > 0:
            self.unsettled[trade.id] = self.trades_lag
        self._settle(spec, trade)
        return trade

    def _commission(
        self, spec: Spec, side: str, price: Decimal, qty: Decimal
    ) -> tuple[Decimal, str]:
        rate, mode = self.market.commission_rate, self.market.commission_mode
        if mode == "received":
            mode = "base" if side == "BUY" else "quote"
        if mode == "base":
            return (qty * rate).quantize(EIGHT), spec.base
        if mode == "quote":
            return (qty * price * rate).quantize(EIGHT), spec.quote
        bnb_price = self.market.prices.get(f"BNB{spec.quote}")
        if not bnb_price:
            raise ApiError(500, -1000, f"fake: set a BNB{spec.quote} price for BNB commission")
        return (qty * price * rate / bnb_price).quantize(EIGHT), "BNB"

    def _settle(self, spec: Spec, trade: Trade) -> None:
        if self.balances is None:
            return
        sign = 1 if trade.is_buyer else -1
        bal = self.balances
        bal[spec.base] = bal.get(spec.base, Decimal(0)) + sign * trade.qty
        bal[spec.quote] = bal.get(spec.quote, Decimal(0)) - sign * trade.qty * trade.price
        bal[trade.commission_asset] = bal.get(trade.commission_asset, Decimal(0)) - trade.commission


def _split(qty: Decimal, parts: int, step: Decimal) -> list[Decimal]:
    """``qty`` in up to ``parts`` step-aligned pieces, the last taking the remainder."""
    piece = (qty / parts / step).to_integral_value(ROUND_DOWN) * step
    pieces = [piece] * (parts - 1) + [qty - piece * (parts - 1)]
    return [p for p in pieces if p > 0]


def _int_param(p: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(p.get(name, default))
    except ValueError:
        raise ApiError(400, -1100, f"Illegal characters found in parameter '{name}'.") from None


def _missing(name: str) -> ApiError:
    """errors.md -1102 MANDATORY_PARAM_EMPTY_OR_MALFORMED."""
    return ApiError(
        400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


def _mandatory(p: Mapping[str, str], *names: str) -> None:
    for name in names:
        if not p.get(name):
            raise _missing(name)


def _time_in_force(p: Mapping[str, str], kind: str) -> str:
    """rest-api.md "New order": LIMIT, STOP_LOSS_LIMIT and TAKE_PROFIT_LIMIT need one;
    errors.md -1115 INVALID_TIF, -1114 TIF_NOT_REQUIRED for the others."""
    tif = p.get("timeInForce")
    if kind in ("LIMIT", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"):
        if not tif:
            raise _missing("timeInForce")
        if tif not in TIME_IN_FORCE:
            raise ApiError(400, -1115, "Invalid timeInForce.")
        if p.get("icebergQty") and tif != "GTC":  # "Any order with an icebergQty MUST ... GTC"
            raise ApiError(400, -2010, "Unsupported order combination")
        return tif
    if tif:
        raise ApiError(400, -1114, "TimeInForce parameter sent when not required.")
    return "GTC"


_NOT_SUPPORTED = {  # errors.md "Messages for ... -2010 NEW_ORDER_REJECTED"
    "MARKET": "Market orders are not supported for this symbol.",
    "STOP_LOSS": "Stop loss orders are not supported for this symbol.",
    "STOP_LOSS_LIMIT": "Stop loss limit orders are not supported for this symbol.",
    "TAKE_PROFIT": "Take profit orders are not supported for this symbol.",
    "TAKE_PROFIT_LIMIT": "Take profit limit orders are not supported for this symbol.",
}


def _symbol_allows(info: Mapping[str, Any], kind: str, p: Mapping[str, str]) -> None:
    """The symbol's exchangeInfo switches, with errors.md's -2010 messages."""
    if info.get("status", "TRADING") != "TRADING":
        raise ApiError(400, -2010, "Market is closed.")
    if kind not in info.get("orderTypes", ORDER_TYPES):
        msg = _NOT_SUPPORTED.get(kind, "Unsupported order combination")
        raise ApiError(400, -2010, msg)
    if p.get("icebergQty") and not info.get("icebergAllowed", True):
        raise ApiError(400, -2010, "Iceberg orders are not supported for this symbol.")
    if p.get("quoteOrderQty") and not info.get("quoteOrderQtyMarketAllowed", True):
        raise ApiError(400, -2010, "Quote order qty market orders are not support for this symbol.")
    if p.get("trailingDelta") and not info.get("allowTrailingStop", False):
        raise ApiError(400, -2010, "Trailing stop orders are not supported for this symbol.")
    if p.get("newOrderRespType", "FULL") not in ("ACK", "RESULT", "FULL"):
        raise ApiError(400, -1130, "Data sent for parameter 'newOrderRespType' is not valid.")


def _require(value: Decimal | None, name: str, required: bool) -> None:
    if required and value is None:
        raise _missing(name)
    if not required and value is not None:
        raise ApiError(400, -1106, f"Parameter '{name}' sent when not required.")


def _dec(value: str | None, name: str = "") -> Decimal | None:
    if value is None:
        return None
    try:
        number = Decimal(value)
    except ArithmeticError:
        number = Decimal("NaN")
    if not number.is_finite():
        raise ApiError(400, -1100, f"Illegal characters found in parameter '{name}'.")
    return number
