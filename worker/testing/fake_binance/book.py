"""The matching engine of the fake Binance: placing, resting, triggering, filling, fees.

Written independently of the real client's filter code, so a bug there is not mirrored here.
Not thread-safe on its own: the server calls it under one lock.

Over 300 lines on purpose: one matching engine (placing, resting, triggering, filling,
fees) whose state must change under one lock.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from decimal import ROUND_DOWN, Decimal
from typing import Any, Literal

from worker.testing.fake_binance.orders import (
    CLIENT_ID,
    DEFAULT_PRICES,
    EIGHT,
    ORDER_TYPES,
    ApiError,
    Order,
    Spec,
    Trade,
)

CommissionMode = Literal["received", "quote", "base", "BNB"]
MAX_TRADES_LIMIT = 1000  # myTrades: larger limits are served as 1000


def _triggered(side: str, kind: str, stop: Decimal, price: Decimal) -> bool:
    """STOP_LOSS: sell when price falls to stop, buy when it rises; TAKE_PROFIT: the reverse."""
    falling = (side == "SELL") == kind.startswith("STOP_LOSS")
    return price <= stop if falling else price >= stop


def _crosses(side: str, limit: Decimal, price: Decimal) -> bool:
    return price <= limit if side == "BUY" else price >= limit


class Book:
    """Orders, trades, prices and balances of one fake account."""

    def __init__(self, symbols: tuple[dict[str, Any], ...], clock_ms: Callable[[], int]) -> None:
        self.exchange_info: dict[str, Any] = {
            "timezone": "UTC",
            "serverTime": 0,
            "rateLimits": [],
            "symbols": [dict(s) for s in symbols],
        }
        self.specs = {s["symbol"]: Spec.parse(s) for s in symbols}
        self.prices: dict[str, Decimal] = {
            k: v for k, v in DEFAULT_PRICES.items() if k in self.specs
        }
        self.clock_ms = clock_ms
        self.orders: list[Order] = []
        self.trades: list[Trade] = []
        self.partial_fills = 1
        self.fill_price_step = Decimal(0)
        self.liquidity: dict[str, Decimal] = {}  # max quantity matched per price event
        self.commission_rate = Decimal("0.001")
        self.commission_mode: CommissionMode = "received"
        self.balances: dict[str, Decimal] | None = None
        # with balances: what open orders need is locked (free = balance - locked), as on
        # Binance, so a second full-size SELL of the same holding is refused with -2010
        self.lock_balances = True
        self.trades_lag = 0  # new trades stay out of myTrades for this many of its answers
        self.unsettled: dict[int, int] = {}  # trade id -> myTrades answers still to miss it
        self.in_match: dict[str, Decimal] = {}  # symbol -> fill this much, then STP expires
        self._order_ids = itertools.count(1001)
        self._trade_ids = itertools.count(5001)
        self._list_ids = itertools.count(1)

    # -- lookups -------------------------------------------------------------------------------

    def spec(self, symbol: str | None) -> Spec:
        if symbol not in self.specs:
            raise ApiError(400, -1121, "Invalid symbol.")
        return self.specs[symbol]

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
        """Validate like Binance, create the order, match it at once if it can."""
        spec = self.spec(p.get("symbol"))
        order = self._new_order(spec, p)
        self._check_filters(spec, order)
        if order.stop_price is not None and _triggered(
            order.side, order.type, order.stop_price, self.prices[spec.symbol]
        ):
            raise ApiError(400, -2010, "Stop price would trigger immediately.")
        self._check_balance(spec, order)
        self.orders.append(order)
        return order, self._match(order, self.prices[spec.symbol], placing=True)

    def _new_order(self, spec: Spec, p: Mapping[str, str]) -> Order:
        side, kind = p.get("side", ""), p.get("type", "")
        if side not in ("BUY", "SELL"):
            raise ApiError(400, -1117, "Invalid side.")
        if kind not in ORDER_TYPES:
            raise ApiError(400, -1116, "Invalid orderType.")
        client_id = self._client_id(p)
        quote = _dec(p.get("quoteOrderQty"))
        qty = self._quantity(spec, p, kind, quote)
        price, stop = _dec(p.get("price")), _dec(p.get("stopPrice"))
        _require(price, "price", kind.endswith("LIMIT"))
        _require(stop, "stopPrice", kind not in ("MARKET", "LIMIT"))
        now = self.clock_ms()
        return Order(next(self._order_ids), client_id, spec.symbol, side, kind, qty,
                     price, stop, quote, now, update_ms=now)  # fmt: skip

    def _client_id(self, p: Mapping[str, str]) -> str:
        """Binance's rule: a client id is unique among *open* orders only."""
        client_id = p.get("newClientOrderId") or f"fake{next(self._order_ids)}"
        if not CLIENT_ID.match(client_id):
            raise ApiError(400, -1100, "Illegal characters found in parameter 'newClientOrderId'.")
        if any(o.is_open and o.client_id == client_id for o in self.orders):
            raise ApiError(400, -2010, "Duplicate order sent.")
        return client_id

    def _quantity(self, spec: Spec, p: Mapping[str, str], kind: str,
                  quote: Decimal | None) -> Decimal:  # fmt: skip
        qty = _dec(p.get("quantity"))
        if qty is None and quote is not None and kind == "MARKET":  # spend `quote` at the price
            units = (quote / self.prices[spec.symbol] / spec.step).to_integral_value(ROUND_DOWN)
            qty = units * spec.step
        if qty is None:
            raise ApiError(400, -1102, "Mandatory parameter 'quantity' was not sent.")
        return qty

    def _check_filters(self, spec: Spec, order: Order) -> None:
        qty = order.orig_qty
        if qty < spec.min_qty or qty > spec.max_qty or qty % spec.step:
            raise ApiError(400, -1013, "Filter failure: LOT_SIZE")
        for price in (order.price, order.stop_price):
            if price is not None and (price <= 0 or price % spec.tick):
                raise ApiError(400, -1013, "Filter failure: PRICE_FILTER")
        reference = order.price or order.stop_price or self.prices[spec.symbol]
        if qty * reference < spec.min_notional:
            raise ApiError(400, -1013, "Filter failure: NOTIONAL")

    def _check_balance(self, spec: Spec, order: Order) -> None:
        if self.balances is None:
            return
        if order.side == "BUY":
            asset = spec.quote
            need = order.orig_qty * (order.price or order.stop_price or self.prices[spec.symbol])
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
            spec = self.specs[o.symbol]
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
        """``POST /api/v3/orderList/oco``: two linked legs. SELL: above TAKE_PROFIT(_LIMIT),
        below STOP_LOSS(_LIMIT); BUY: the reverse. Neither leg may trigger at once; the
        balance is locked once for the list. (LIMIT_MAKER legs are not supported here.)"""
        spec = self.spec(p.get("symbol"))
        side = p.get("side", "")
        if side not in ("BUY", "SELL"):
            raise ApiError(400, -1117, "Invalid side.")
        take = ("TAKE_PROFIT", "TAKE_PROFIT_LIMIT")
        stop = ("STOP_LOSS", "STOP_LOSS_LIMIT")
        allowed = (
            {"above": take, "below": stop} if side == "SELL" else {"above": stop, "below": take}
        )
        legs: list[Order] = []
        for where in ("above", "below"):
            kind = p.get(f"{where}Type", "")
            if kind not in allowed[where]:
                raise ApiError(400, -1116, f"Invalid {where}Type.")
            leg_params = {
                "side": side,
                "type": kind,
                "quantity": p.get("quantity", ""),
                "newClientOrderId": p.get(f"{where}ClientOrderId", ""),
            }
            for name in ("Price", "StopPrice"):
                if f"{where}{name}" in p:
                    leg_params[name[0].lower() + name[1:]] = p[f"{where}{name}"]
            leg = self._new_order(spec, leg_params)
            self._check_filters(spec, leg)
            assert leg.stop_price is not None
            if _triggered(side, kind, leg.stop_price, self.prices[spec.symbol]):
                raise ApiError(
                    400, -2010, "The relationship of the prices for the orders is not correct."
                )
            legs.append(leg)
        if legs[0].client_id == legs[1].client_id:
            raise ApiError(400, -2010, "Duplicate order sent.")
        for leg in legs:
            self._check_balance(spec, leg)
        list_id = next(self._list_ids)
        for leg in legs:
            leg.order_list_id = list_id
            self.orders.append(leg)
        return list_id, legs

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
        self.prices[symbol] = price
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
        stp_after = self.in_match.pop(order.symbol, None)
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
            order, price or self.prices[order.symbol], maker=order.price is not None, unlimited=True
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
        spec = self.specs[order.symbol]
        liquidity = None if unlimited else self.liquidity.get(order.symbol)
        qty = min(c for c in (order.remaining, liquidity, cap) if c is not None)
        trades = []
        for i, part in enumerate(_split(qty, self.partial_fills, spec.step)):
            step = self.fill_price_step * i
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
            next(self._trade_ids),
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
        rate, mode = self.commission_rate, self.commission_mode
        if mode == "received":
            mode = "base" if side == "BUY" else "quote"
        if mode == "base":
            return (qty * rate).quantize(EIGHT), spec.base
        if mode == "quote":
            return (qty * price * rate).quantize(EIGHT), spec.quote
        bnb_price = self.prices.get(f"BNB{spec.quote}")
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


def _require(value: Decimal | None, name: str, required: bool) -> None:
    if required and value is None:
        raise ApiError(400, -1102, f"Mandatory parameter '{name}' was not sent.")
    if not required and value is not None:
        raise ApiError(400, -1106, f"Parameter '{name}' sent when not required.")


def _dec(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(value)
    except ArithmeticError:
        raise ApiError(400, -1100, f"Illegal characters found in a parameter: {value!r}") from None
