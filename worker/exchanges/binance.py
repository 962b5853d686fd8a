"""Binance spot REST adapter: a thin signed client on ``httpx.AsyncClient``.

* Signed requests: the signature of the exact query string sent, by the account's key type
  (HMAC-SHA256 hex, RSA or Ed25519 base64: :mod:`worker.exchanges.signing`), ``X-MBX-APIKEY``
  header, ``timestamp`` corrected by the server-time offset (``GET /api/v3/time``, synced on
  first use and again, with one retry, after -1021).
* Symbol filters are applied before sending (quantity floored to stepSize, prices to
  tickSize, minQty and minimum notional), so a bad order fails locally with a clear reason.
* Errors are classified by :mod:`worker.exchanges.binance_http`; 429/418 block *every*
  request of every client sharing the :class:`RateLimitGate` until ``Retry-After`` passes.
* The API key and secret never appear in a repr, a log line or an exception message.

Base URLs: :data:`DEFAULT_BASE_URL`, or :data:`TESTNET_BASE_URL` for the spot testnet.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final
from urllib.parse import urlencode

import httpx

from worker.exchanges.base import (
    ClockSkew,
    ExchangeFill,
    FilterViolation,
    OcoRequest,
    OrderRequest,
    OrderState,
    OutcomeUnknown,
    SymbolRules,
    UnknownOrder,
)
from worker.exchanges.binance_answers import (
    oco_states,
    open_order_states,
    order_state,
    parsed,
    rate_limit,
    rules_from_exchange_info,
    trade_page,
)
from worker.exchanges.binance_http import (
    BinanceHttp,
    Clock,
    HttpOwner,
    RateLimitGate,
    ticker_price,
)
from worker.exchanges.filters import check_order, format_decimal, round_price, round_quantity
from worker.exchanges.signing import Credentials

__all__ = [
    "DEFAULT_BASE_URL",
    "TESTNET_BASE_URL",
    "BinanceClient",
    "BinancePublicPrices",
    "Credentials",
    "RateLimitGate",
]

DEFAULT_BASE_URL: Final = "https://api.binance.com"
TESTNET_BASE_URL: Final = "https://testnet.binance.vision"
MAX_RECV_WINDOW_MS: Final = 60_000
MAX_TRADES_PAGE: Final = 1_000  # myTrades serves at most this many trades per request
_ORDER_TYPES: Final = {
    "market": "MARKET",
    "limit": "LIMIT",
    "stop_loss": "STOP_LOSS",
    "take_profit": "TAKE_PROFIT",
}


class BinancePublicPrices(HttpOwner):
    """Price feed from Binance public market data (no key): paper trading on real prices."""

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        gate: RateLimitGate | None = None,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = BinanceHttp(base_url, gate or RateLimitGate(), timeout_s, transport)

    def __repr__(self) -> str:
        return f"BinancePublicPrices(base_url={self._http.base_url!r})"

    async def price(self, symbol: str) -> Decimal:
        return await ticker_price(self._http, symbol)


class BinanceClient(HttpOwner):
    """The :class:`~worker.exchanges.base.Exchange` port on Binance spot REST."""

    def __init__(
        self,
        api_key: str | Credentials,
        api_secret: str = "",
        *,
        key_type: str = "hmac",
        base_url: str = DEFAULT_BASE_URL,
        clock: Clock = time.time,
        recv_window_ms: int = 5_000,
        timeout_s: float = 10.0,
        gate: RateLimitGate | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rules_ttl_s: float = 3_600.0,
        trades_page_size: int = MAX_TRADES_PAGE,
        ws_api_url: str | None = None,
    ) -> None:
        if not 0 < recv_window_ms <= MAX_RECV_WINDOW_MS:
            raise ValueError(f"recv_window_ms must be in 1..{MAX_RECV_WINDOW_MS}")
        if not 0 < trades_page_size <= MAX_TRADES_PAGE:
            raise ValueError(f"trades_page_size must be in 1..{MAX_TRADES_PAGE}")
        self._trades_page_size = trades_page_size
        self._credentials = (
            api_key
            if isinstance(api_key, Credentials)
            else Credentials.of(api_key, api_secret, key_type)
        )
        self._clock = clock
        self._recv_window_ms = recv_window_ms
        self._http = BinanceHttp(base_url, gate or RateLimitGate(clock), timeout_s, transport)
        self._offset_ms: int | None = None
        self._rules: dict[str, tuple[float, SymbolRules]] = {}
        self._rules_ttl_s = rules_ttl_s
        self.ws_api_url = ws_api_url  # the account's user data stream (None: not followed)

    def __repr__(self) -> str:
        key_type = self._credentials.key_type
        return f"BinanceClient(base_url={self._http.base_url!r}, key_type={key_type}, key=***)"

    # -- the Exchange port ---------------------------------------------------------------------

    async def place_order(self, req: OrderRequest) -> OrderState:
        params = await self._order_params(req)
        return parsed(order_state, await self._signed("POST", "/api/v3/order", params))

    async def place_oco(self, req: OcoRequest) -> tuple[OrderState, ...]:
        """``POST /api/v3/orderList/oco``: both legs stop-market (STOP_LOSS / TAKE_PROFIT),
        or the take-profit a LIMIT_MAKER (``take_profit_maker``), the quantity floored to the
        step size, the prices rounded to the tick size."""
        params = await self._oco_params(req)
        body = await self._signed("POST", "/api/v3/orderList/oco", params)
        return parsed(oco_states, body)

    async def get_order(self, symbol: str, client_order_id: str) -> OrderState | None:
        params = {"symbol": symbol, "origClientOrderId": client_order_id}
        try:
            return parsed(order_state, await self._signed("GET", "/api/v3/order", params))
        except UnknownOrder:
            return None

    async def open_orders(self, symbol: str | None = None) -> list[OrderState]:
        """``GET /api/v3/openOrders``: the account's open orders on ``symbol`` (weight 6),
        or on every symbol (None: weight 80). rest-api.md "Current open orders"."""
        params = {"symbol": symbol} if symbol is not None else {}
        body = await self._signed("GET", "/api/v3/openOrders", params)
        return parsed(open_order_states, body)

    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderState:
        params = {"symbol": symbol, "origClientOrderId": client_order_id}
        return parsed(order_state, await self._signed("DELETE", "/api/v3/order", params))

    async def get_fills(
        self, symbol: str, exchange_order_id: str, *, after: str | None = None
    ) -> list[ExchangeFill]:
        """The order's trades (those after trade id ``after``, if given), page by page:
        ``symbol`` + ``orderId`` + ``fromId`` (trades with id >= fromId, oldest first;
        without fromId Binance would answer the *most recent* ones), the next page from the
        last id + 1, until a short page."""
        found: dict[str, ExchangeFill] = {}
        from_id = int(after) + 1 if after is not None else 0
        while True:
            params = {
                "symbol": symbol,
                "orderId": exchange_order_id,
                "fromId": str(from_id),
                "limit": str(self._trades_page_size),
            }
            page = parsed(trade_page, await self._signed("GET", "/api/v3/myTrades", params))
            found.update((f.trade_id, f) for f in page)
            if len(page) < self._trades_page_size:
                break
            from_id = max(int(f.trade_id) for f in page) + 1
        return sorted(found.values(), key=lambda f: (f.time_ms, int(f.trade_id)))

    async def symbol_rules(self, symbol: str) -> SymbolRules:
        cached = self._rules.get(symbol)
        if cached and self._clock() - cached[0] < self._rules_ttl_s:
            return cached[1]
        body = await self._http.send("GET", "/api/v3/exchangeInfo", urlencode({"symbol": symbol}))
        rules = rules_from_exchange_info(body, symbol)
        self._rules[symbol] = (self._clock(), rules)
        weight, orders = rate_limit(body, "REQUEST_WEIGHT"), rate_limit(body, "ORDERS")
        if weight is not None:
            self._http.gate.limit = weight
        if orders is not None:
            self._http.orders_gate.limit = orders
        return rules

    async def price(self, symbol: str) -> Decimal:
        return await ticker_price(self._http, symbol)

    # -- the account ---------------------------------------------------------------------------

    async def free_balances(self) -> dict[str, Decimal]:
        """``GET /api/v3/account`` (weight 20): each asset's free balance. It also proves the
        key: a key Binance refuses raises CredentialsRejected."""
        body = await self._signed("GET", "/api/v3/account", {"omitZeroBalances": "true"})
        try:
            return {str(b["asset"]): Decimal(str(b["free"])) for b in body["balances"]}
        except (KeyError, TypeError, ArithmeticError) as exc:
            raise OutcomeUnknown(f"unreadable account answer: {type(exc).__name__}") from exc

    @property
    def credentials(self) -> Credentials:
        """The account's key (for the user data stream's signed subscription)."""
        return self._credentials

    # -- time and signing ----------------------------------------------------------------------

    async def timestamp_ms(self) -> int:
        """A request ``timestamp``: our clock corrected by the server's (synced on first use)."""
        if self._offset_ms is None:
            await self.sync_time()
        return round(self._clock() * 1000) + (self._offset_ms or 0)

    async def sync_time(self) -> int:
        """Measure the server clock's offset from ours (ms); used for every timestamp."""
        before = self._clock()
        body = await self._http.send("GET", "/api/v3/time")
        after = self._clock()
        self._offset_ms = int(body["serverTime"]) - round((before + after) * 500)
        self._http.log.info("exchange_time_synced", offset_ms=self._offset_ms)
        return self._offset_ms

    async def _signed(self, method: str, path: str, params: Mapping[str, str]) -> Any:
        if self._offset_ms is None:
            await self.sync_time()
        try:
            return await self._send_signed(method, path, params)
        except ClockSkew:  # rejected before processing: safe to resync and send again
            self._http.log.warning("exchange_clock_skew", method=method, path=path)
            await self.sync_time()
            return await self._send_signed(method, path, params)

    @property
    def used(self) -> dict[str, int]:
        """The last ``X-MBX-*`` counters read: the IP's weight and this account's orders."""
        return {**self._http.gate.used, **self._http.orders_gate.used}

    async def _send_signed(self, method: str, path: str, params: Mapping[str, str]) -> Any:
        timestamp = round(self._clock() * 1000) + (self._offset_ms or 0)
        query = urlencode({**params, "recvWindow": self._recv_window_ms, "timestamp": timestamp})
        signature = urlencode({"signature": self._credentials.sign(query)})
        headers = {"X-MBX-APIKEY": self._credentials.api_key.reveal()}
        new_order = method == "POST"  # an order or an order list: counted per account
        return await self._http.send(
            method, path, f"{query}&{signature}", headers, new_order=new_order
        )

    # -- filters -------------------------------------------------------------------------------

    async def _order_params(self, req: OrderRequest) -> dict[str, str]:
        rules = await self.symbol_rules(req.symbol)
        qty = _floored_quantity(rules, req.quantity) if req.quantity is not None else None
        price = round_price(rules, req.price) if req.price is not None else None
        stop = round_price(rules, req.stop_price) if req.stop_price is not None else None
        reference = price if price is not None else stop
        if reference is None and req.quote_quantity is None:
            reference = await self.price(req.symbol)  # market order: notional at last price
        check_order(rules, qty, reference, quote_quantity=req.quote_quantity)
        if stop is not None and price is not None:
            check_order(rules, None, stop)
        return _wire_params(req, qty, price, stop)

    async def _oco_params(self, req: OcoRequest) -> dict[str, str]:
        rules = await self.symbol_rules(req.symbol)
        qty = _floored_quantity(rules, req.quantity)
        stop = round_price(rules, req.stop_price)
        take = round_price(rules, req.take_profit_price)
        check_order(rules, qty, stop)
        check_order(rules, qty, take)
        legs = {
            "stop": ("STOP_LOSS", req.stop_client_order_id, stop),
            "take": ("TAKE_PROFIT", req.take_profit_client_order_id, take),
        }
        above, below = ("take", "stop") if req.side == "sell" else ("stop", "take")
        params = {
            "symbol": req.symbol,
            "side": req.side.upper(),
            "quantity": format_decimal(qty),
            "listClientOrderId": req.list_client_order_id,
            "newOrderRespType": "FULL",
        }
        for where, leg in (("above", legs[above]), ("below", legs[below])):
            kind, client_id, price = leg
            params[f"{where}Type"] = kind
            params[f"{where}ClientOrderId"] = client_id
            params[f"{where}StopPrice"] = format_decimal(price)
        if req.take_profit_maker:  # rest-api.md: aboveType LIMIT_MAKER takes abovePrice
            del params["aboveStopPrice"]
            params["aboveType"], params["abovePrice"] = "LIMIT_MAKER", format_decimal(take)
        return params


def _floored_quantity(rules: SymbolRules, quantity: Decimal) -> Decimal:
    if quantity <= 0:
        raise FilterViolation(f"{rules.symbol} quantity must be positive, got {quantity}")
    floored = round_quantity(rules, quantity)
    try:
        check_order(rules, floored, None)
    except FilterViolation as exc:
        if floored == quantity:
            raise
        detail = f"requested {quantity}, floored to stepSize {rules.step_size.normalize():f}"
        raise FilterViolation(f"{exc.reason} ({detail})") from None
    return floored


def _wire_params(
    req: OrderRequest, qty: Decimal | None, price: Decimal | None, stop: Decimal | None
) -> dict[str, str]:
    order_type = _ORDER_TYPES[req.type]
    if stop is not None and price is not None:
        order_type += "_LIMIT"
    params = {
        "symbol": req.symbol,
        "side": req.side.upper(),
        "type": order_type,
        "newClientOrderId": req.client_order_id,
        "newOrderRespType": "FULL",
    }
    if qty is not None:
        params["quantity"] = format_decimal(qty)
    elif req.quote_quantity is not None:
        params["quoteOrderQty"] = format_decimal(req.quote_quantity)
    if price is not None:
        params["price"], params["timeInForce"] = format_decimal(price), "GTC"
    if stop is not None:
        params["stopPrice"] = format_decimal(stop)
    return params
