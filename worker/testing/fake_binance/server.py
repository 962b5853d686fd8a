"""The fake Binance server: HTTP, authentication, the fault queue, request records.

Over 300 lines on purpose: the HTTP surface of the fake (routes, signatures, faults,
records) in one place; the matching engine is book.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl

from worker.testing.fake_binance.book import Book, CommissionMode
from worker.testing.fake_binance.faults import Fault, FaultKind, FaultQueue
from worker.testing.fake_binance.orders import DEFAULT_SYMBOLS, ApiError, Order, f8

OCO = "/api/v3/orderList/oco"
_SIGNED = frozenset(
    {"/api/v3/order", OCO, "/api/v3/myTrades", "/api/v3/account", "/api/v3/openOrders"}
)
HANG_LIMIT_S = 30.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it, and what it answered (None: no answer)."""

    method: str
    path: str
    params: dict[str, str]
    api_key: str | None
    status: int | None
    fault: FaultKind | None


@dataclass
class _Reply:
    status: int | None  # None: close the connection without answering
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    hang: threading.Event | None = None  # hold the answer until set, then drop it


class FakeBinance:
    """The fake server. ``start()`` binds 127.0.0.1 (port 0: any free port); ``stop()``."""

    def __init__(
        self,
        *,
        api_key: str = "fake-api-key",
        api_secret: str = "fake-api-secret",
        symbols: tuple[dict[str, Any], ...] = DEFAULT_SYMBOLS,
        clock: Callable[[], float] = time.time,
        port: int = 0,
    ) -> None:
        self.api_key, self._secret = api_key, api_secret
        self.clock = clock
        self.time_offset_ms = 0  # the server's clock minus the clock's
        self.ban_after_limit_s = 120  # a request during a 429 window earns a 418 this long
        self.faults = FaultQueue()
        self.book = Book(symbols, self._now_ms)
        self._port = port
        self._lock = threading.RLock()
        self._requests: list[RecordedRequest] = []
        self._limited_until = 0.0
        self._banned_until = 0.0
        self._hung: list[threading.Event] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = self.base_url if self._server is not None else "not started"
        return f"FakeBinance({where})"

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        self._server = _Server(("127.0.0.1", self._port), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-binance",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release_hung()  # hung requests end by dropping their connections
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: give it to the client as its base URL."""
        if self._server is None:
            raise RuntimeError("FakeBinance is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def release_hung(self) -> None:
        """Let requests held by a HANG fault end (their connections are dropped)."""
        with self._lock:
            hung, self._hung = self._hung, []
        for event in hung:
            event.set()

    # -- the market and the account ------------------------------------------------------------

    def set_price(self, symbol: str, price: Decimal | str) -> None:
        """Move the market: resting limit, stop-loss and take-profit orders that cross fill."""
        with self._lock:
            self.book.set_price(symbol, Decimal(price))

    def set_partial_fills(self, parts: int, price_step: Decimal | str = "0") -> None:
        """Split every fill into ``parts`` trades, each ``price_step`` worse than the last."""
        with self._lock:
            self.book.partial_fills, self.book.fill_price_step = parts, Decimal(price_step)

    def set_liquidity(self, symbol: str, quantity: Decimal | str | None) -> None:
        """At most ``quantity`` matched per price event (market orders expire the rest)."""
        with self._lock:
            if quantity is None:
                self.book.liquidity.pop(symbol, None)
            else:
                self.book.liquidity[symbol] = Decimal(quantity)

    def set_commission(self, rate: Decimal | str, asset: CommissionMode = "received") -> None:
        """Commission ``rate`` charged in the received asset (Binance), quote, base or BNB."""
        with self._lock:
            self.book.commission_rate, self.book.commission_mode = Decimal(rate), asset

    def expire_in_match(self, symbol: str, after: Decimal | str = "0") -> None:
        """Self-trade prevention, once: the next order that takes liquidity on ``symbol``
        fills ``after`` (base quantity), then meets one of the account's own resting orders
        and ends EXPIRED_IN_MATCH with the rest unfilled."""
        with self._lock:
            self.book.in_match[symbol] = Decimal(after)

    def end_order(self, client_order_id: str, status: str = "CANCELED") -> None:
        """End an open order as if someone else did: the user cancelling it on Binance
        (``CANCELED``) or the exchange expiring it (``EXPIRED``). What it filled stays."""
        if status not in ("CANCELED", "EXPIRED"):
            raise ValueError(f"an order is ended CANCELED or EXPIRED, not {status!r}")
        with self._lock:
            live = [o for o in self.book.orders if o.client_id == client_order_id and o.is_open]
            if not live:
                raise LookupError(f"no open order {client_order_id!r}")
            live[-1].status, live[-1].update_ms = status, self._now_ms()
            self.book.end_list(live[-1], status)  # ending one leg of an OCO ends the list

    def set_trades_lag(self, answers: int) -> None:
        """Trades made from now on are missing from ``myTrades`` for its next ``answers``
        answers (Binance serves myTrades from "Memory => Database": it can lag the order)."""
        with self._lock:
            self.book.trades_lag = answers

    def set_balances(
        self, balances: Mapping[str, Decimal | str] | None, *, lock: bool = True
    ) -> None:
        """Enforce (and move) balances; None (the default) means unlimited funds. With
        ``lock`` (the default) open orders lock what they need, as on Binance: a second
        full-size SELL of the same holding is refused with -2010 (an OCO locks once)."""
        with self._lock:
            self.book.balances = (
                None if balances is None else {k: Decimal(v) for k, v in balances.items()}
            )
            self.book.lock_balances = lock

    # -- inspection ----------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def orders(self, client_order_id: str | None = None) -> list[dict[str, Any]]:
        """Snapshots (GET /api/v3/order shape) of every order, or of those with this id."""
        with self._lock:
            return [o.json() for o in self.book.orders if client_order_id in (None, o.client_id)]

    def order_count(self, client_order_id: str) -> int:
        return len(self.orders(client_order_id))

    def posted_client_ids(self) -> list[str]:
        """Every client order id POSTed, once per POST whatever the answer: single orders
        (``newClientOrderId``) and both legs of each OCO list."""
        ids: list[str] = []
        for r in self.requests:
            if r.method == "POST" and r.path == "/api/v3/order":
                ids.append(r.params.get("newClientOrderId", ""))
            elif r.method == "POST" and r.path == OCO:
                ids += [r.params.get(f"{w}ClientOrderId", "") for w in ("above", "below")]
        return ids

    def trades(self) -> list[dict[str, Any]]:
        with self._lock:
            return [t.my_trade_json() for t in self.book.trades]

    # -- serving -------------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return round(self.clock() * 1000) + self.time_offset_ms

    def handle(self, method: str, target: str, body: str, headers: Mapping[str, str]) -> _Reply:
        """Answer one request (``headers`` with lower-case names)."""
        path, _, query = target.partition("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        params.update(parse_qsl(body, keep_blank_values=True))
        with self._lock:
            fault = None
            try:
                reply = self._gate()
                if reply is None:
                    fault = self.faults.take(method, path, params)
                    reply = self._pre_fault(fault) if fault and not fault.applies else None
                if reply is None:
                    reply = self._route(method, path, query, body, params, headers, fault)
            except ApiError as exc:
                reply = _Reply(exc.status, {"code": exc.code, "msg": exc.msg})
            key = headers.get("x-mbx-apikey")
            self._requests.append(
                RecordedRequest(
                    method, path, params, key, reply.status, fault.kind if fault else None
                )
            )
        if reply.hang is not None:
            reply.hang.wait(HANG_LIMIT_S)
        return reply

    def _gate(self) -> _Reply | None:
        """Binance's answer to a client that keeps going after a 429: a 418 ban."""
        now = self.clock()
        if now < self._limited_until and now >= self._banned_until:
            self._banned_until = now + self.ban_after_limit_s
        if now < self._banned_until:
            wait = int(self._banned_until - now) + 1
            return _reply_error(418, -1003, "Way too many requests; IP banned.", wait)
        return None

    def _pre_fault(self, fault: Fault) -> _Reply:
        """A fault answered before the request is looked at: nothing is applied."""
        now = self.clock()
        if fault.kind is FaultKind.RATE_LIMIT:
            self._limited_until = now + fault.retry_after
        elif fault.kind is FaultKind.BAN:
            self._banned_until = now + fault.retry_after
        status, body = fault.error_reply()
        return _Reply(status, body, _retry_after(fault))

    def _route(
        self,
        method: str,
        path: str,
        query: str,
        body: str,
        params: dict[str, str],
        headers: Mapping[str, str],
        fault: Fault | None,
    ) -> _Reply:
        if path in _SIGNED:
            self._authenticate(query, body, params, headers)
        if fault is not None and fault.kind is FaultKind.CANCEL_RACE:
            which = params if fault.fills is None else {**params, "origClientOrderId": fault.fills}
            order = self.book.find(which, lookup=False)
            if order is not None and order.is_open:
                self.book.fill_now(order)
        answer = self._endpoint(method, path, params, fault)
        if fault is None:
            return _Reply(200, answer)
        if fault.kind is FaultKind.DROP_AFTER_APPLY:
            return _Reply(None)
        if fault.kind in (FaultKind.TIMEOUT_AFTER_APPLY, FaultKind.SERVER_ERROR_AFTER_APPLY):
            return _Reply(*fault.error_reply())
        if fault.kind is FaultKind.HANG:
            self._hung.append(threading.Event())
            return _Reply(None, hang=self._hung[-1])
        return _Reply(200, answer)

    def _authenticate(
        self, query: str, body: str, params: Mapping[str, str], headers: Mapping[str, str]
    ) -> None:
        key = headers.get("x-mbx-apikey")
        if not key:
            raise ApiError(401, -2014, "API-key format invalid.")
        if not hmac.compare_digest(key, self.api_key):
            raise ApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        payload = "&".join(p for p in query.split("&") if not p.startswith("signature=")) + body
        expected = hmac.new(self._secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, params.get("signature", "")):
            raise ApiError(400, -1022, "Signature for this request is not valid.")
        self._check_timestamp(params)

    def _check_timestamp(self, params: Mapping[str, str]) -> None:
        if "timestamp" not in params:
            raise ApiError(400, -1102, "Mandatory parameter 'timestamp' was not sent.")
        window = int(params.get("recvWindow", "5000"))
        if window > 60_000:
            raise ApiError(400, -1131, "recvWindow must be less than 60000")
        sent, now = int(params["timestamp"]), self._now_ms()
        if sent > now + 1000:
            raise ApiError(
                400, -1021, "Timestamp for this request was 1000ms ahead of the server's time."
            )
        if now - sent > window:
            raise ApiError(400, -1021, "Timestamp for this request is outside of the recvWindow.")

    def _endpoint(self, method: str, path: str, params: dict[str, str], fault: Fault | None) -> Any:
        route = (method, path)
        if route == ("GET", "/api/v3/time"):
            return {"serverTime": self._now_ms()}
        if route == ("GET", "/api/v3/exchangeInfo"):
            return self._exchange_info(params)
        if route == ("GET", "/api/v3/ticker/price"):
            return self._ticker(params)
        if route == ("POST", "/api/v3/order"):
            order, fills = self.book.place(params)
            order.hidden_lookups = fault.lookups if fault else 0
            return order.full_json(fills)
        if route == ("POST", OCO):
            list_id, legs = self.book.place_oco(params)
            for leg in legs:
                leg.hidden_lookups = fault.lookups if fault else 0
            return self._list_json(list_id, params, legs)
        if route == ("GET", "/api/v3/order"):
            return self._existing(params, lookup=True).json()
        if route == ("DELETE", "/api/v3/order"):
            return self._cancel(params)
        if route == ("GET", "/api/v3/myTrades"):
            return self.book.my_trades(params)
        if route == ("GET", "/api/v3/account"):
            return self._account()
        if route == ("GET", "/api/v3/openOrders"):
            return [
                o.json()
                for o in self.book.orders
                if o.is_open and params.get("symbol") in (None, o.symbol)
            ]
        raise ApiError(404, -1000, f"fake: no route {method} {path}")

    def _exchange_info(self, params: Mapping[str, str]) -> dict[str, Any]:
        info = dict(self.book.exchange_info, serverTime=self._now_ms())
        if "symbol" in params:
            self.book.spec(params["symbol"])
            info["symbols"] = [s for s in info["symbols"] if s["symbol"] == params["symbol"]]
        return info

    def _ticker(self, params: Mapping[str, str]) -> Any:
        if "symbol" not in params:
            return [{"symbol": s, "price": f8(p)} for s, p in self.book.prices.items()]
        self.book.spec(params["symbol"])
        return {"symbol": params["symbol"], "price": f8(self.book.prices[params["symbol"]])}

    def _existing(self, params: Mapping[str, str], *, lookup: bool) -> Order:
        self.book.spec(params.get("symbol"))
        order = self.book.find(params, lookup=lookup)
        if order is None:
            raise ApiError(400, -2013, "Order does not exist.")
        return order

    def _cancel(self, params: Mapping[str, str]) -> dict[str, Any]:
        self.book.spec(params.get("symbol"))
        order = self.book.find(params, lookup=False)
        if order is None or not order.is_open:
            raise ApiError(400, -2011, "Unknown order sent.")
        order.status, order.update_ms = "CANCELED", self._now_ms()
        self.book.end_list(order, "CANCELED")  # cancelling one leg cancels the whole list
        cancel_id = params.get("newClientOrderId") or f"cancel{order.order_id}"
        return order.cancel_json(cancel_id, order.update_ms)

    def _list_json(self, list_id: int, params: Mapping[str, str], legs: list[Order]) -> Any:
        return {
            "orderListId": list_id,
            "contingencyType": "OCO",
            "listStatusType": "EXEC_STARTED",
            "listOrderStatus": "EXECUTING",
            "listClientOrderId": params.get("listClientOrderId") or f"list{list_id}",
            "transactionTime": self._now_ms(),
            "symbol": legs[0].symbol,
            "orders": [
                {"symbol": o.symbol, "orderId": o.order_id, "clientOrderId": o.client_id}
                for o in legs
            ],
            "orderReports": [o.report_json() for o in legs],
        }

    def _account(self) -> dict[str, Any]:
        balances = self.book.balances or {}
        return {
            "canTrade": True,
            "accountType": "SPOT",
            "updateTime": self._now_ms(),
            "balances": [
                {"asset": a, "free": f8(v - self.book.locked(a)), "locked": f8(self.book.locked(a))}
                for a, v in sorted(balances.items())
            ],
        }


def _retry_after(fault: Fault) -> tuple[tuple[str, str], ...]:
    if fault.kind in (FaultKind.RATE_LIMIT, FaultKind.BAN):
        return (("Retry-After", str(fault.retry_after)),)
    return ()


def _reply_error(status: int, code: int, msg: str, retry_after: int) -> _Reply:
    return _Reply(status, {"code": code, "msg": msg}, (("Retry-After", str(retry_after)),))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeBinance


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.server.fake.handle(method, self.path, body, headers)
        self.close_connection = True
        if reply.status is None:
            return  # dropped: the client sees the connection close with no answer
        data = b"" if reply.body is None else _encode(reply.body)
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        kind = "text/html" if isinstance(reply.body, bytes) else "application/json;charset=UTF-8"
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests assert on :attr:`FakeBinance.requests` instead."""


def _encode(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    return json.dumps(body, default=str).encode()
