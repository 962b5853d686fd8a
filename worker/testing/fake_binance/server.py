"""The fake Binance server: accounts, the HTTP surface, faults and request records.

Routes are in :mod:`.table` (handlers :mod:`.routes`, :mod:`.order_lists`), signatures in
:mod:`.signatures`, keys in :mod:`.accounts`, rate limits in :mod:`.limits`, filters in
:mod:`.filters`, matching in :mod:`.book`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Self
from urllib.parse import parse_qsl

from worker.testing.fake_binance.accounts import (
    FakeAccount,
    KeyType,
    identify,
    make_keys,
    random_key,
)
from worker.testing.fake_binance.book import Book
from worker.testing.fake_binance.faults import Fault, FaultKind, FaultQueue
from worker.testing.fake_binance.limits import Limits, RateLimited
from worker.testing.fake_binance.market import Market
from worker.testing.fake_binance.orders import DEFAULT_SYMBOLS, ApiError
from worker.testing.fake_binance.routes import Call, Route
from worker.testing.fake_binance.serving import Reply, Serving
from worker.testing.fake_binance.signatures import check_timestamp, payload, verify
from worker.testing.fake_binance.table import OCO, ROUTES
from worker.testing.fake_binance.ws_api import WsApi

HANG_LIMIT_S = 30.0
DEFAULT_ACCOUNT = "default"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it, and what it answered (None: no answer)."""

    method: str
    path: str
    params: dict[str, str]
    api_key: str | None
    status: int | None
    fault: FaultKind | None
    account: str | None = None  # the account it was signed for (None: public or refused)


class FakeBinance(Serving):
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
        super().__init__(port)
        self.clock = clock
        self.time_offset_ms = 0  # the server's clock minus the clock's
        self.faults = FaultQueue()
        self.market = Market(symbols)
        self.limits = Limits(self.market.rate_limits, clock)
        self.accounts: dict[str, FakeAccount] = {}  # by name
        self._lock = threading.RLock()
        self._requests: list[RecordedRequest] = []
        self.ws_api = WsApi(self, self._lock)  # the WebSocket API: user data stream (ws_api.py)
        self.add_account(DEFAULT_ACCOUNT, api_key=api_key, api_secret=api_secret)

    def start(self) -> Self:
        super().start()
        self.ws_api.start()
        return self

    def stop(self) -> None:
        self.ws_api.stop()
        super().stop()

    @property
    def ws_api_url(self) -> str:
        """``ws://127.0.0.1:<port>/ws-api/v3``: give it to the client as its WebSocket API URL."""
        return self.ws_api.url

    # -- accounts ------------------------------------------------------------------------------

    def add_account(
        self,
        name: str,
        *,
        key_type: KeyType = "hmac",
        api_key: str | None = None,
        api_secret: str | None = None,
        public_key_pem: str | None = None,
    ) -> FakeAccount:
        """A new account with its own key (generated when not given: an HMAC secret, or an
        Ed25519/RSA key pair whose ``private_key_pem`` the account exposes)."""
        with self._lock:
            if name in self.accounts:
                raise ValueError(f"account {name!r} exists")
            secret, private_pem, public = make_keys(key_type, api_secret, public_key_pem)
            account = FakeAccount(
                name, key_type, api_key or random_key(), Book(self.market, self.now_ms),
                secret, private_pem, public,
            )  # fmt: skip
            self.accounts[name] = account
            return account

    def add_key(self, name: str, *, key_type: KeyType = "hmac") -> FakeAccount:
        """Another API key of the account ``name`` (Binance lets an account have several):
        the same book (balances, orders, trades) and the same ORDERS counters, signed with
        a key of its own. Registered as ``<name>#<n>``; ``account(name)`` stays the first."""
        with self._lock:
            first = self.accounts[name]
            secret, private_pem, public = make_keys(key_type, None, None)
            extra = FakeAccount(
                f"{name}#{sum(n.startswith(name + '#') for n in self.accounts) + 2}",
                key_type, random_key(), first.book, secret, private_pem, public,
                order_times=first.order_times,
            )  # fmt: skip
            self.accounts[extra.name] = extra
            return extra

    def account(self, name: str = DEFAULT_ACCOUNT) -> FakeAccount:
        return self.accounts[name]

    @property
    def api_key(self) -> str:
        return self.account().api_key

    @property
    def book(self) -> Book:
        """The default account's book."""
        return self.account().book

    def disable_key(self, api_key: str) -> None:
        """The key answers -2015 from now on (as a key deleted or restricted on Binance)."""
        self._by_key(api_key).enabled = False

    def enable_key(self, api_key: str) -> None:
        self._by_key(api_key).enabled = True

    def _by_key(self, api_key: str) -> FakeAccount:
        return next(a for a in self.accounts.values() if a.api_key == api_key)

    def testnet_reset(self) -> None:
        """The spot testnet's periodic reset: every account's orders, trades and balances
        are forgotten (keys stay); old orders answer -2013 "Order does not exist."."""
        with self._lock:
            for account in self.accounts.values():
                account.book.reset()
                account.order_times.clear()
            self.ws_api.forget()

    # -- the market and the accounts' books ----------------------------------------------------

    def set_price(self, symbol: str, price: Decimal | str) -> None:
        """Move the market: resting orders of every account that cross fill."""
        with self._lock:
            for account in self.accounts.values():
                account.book.set_price(symbol, Decimal(price))
            self.ws_api.publish()

    def set_partial_fills(self, parts: int, price_step: Decimal | str = "0") -> None:
        """Split every fill into ``parts`` trades, each ``price_step`` worse than the last."""
        with self._lock:
            self.market.partial_fills, self.market.fill_price_step = parts, Decimal(price_step)

    def set_liquidity(self, symbol: str, quantity: Decimal | str | None) -> None:
        """At most ``quantity`` matched per price event (market/IOC orders expire the rest,
        FOK orders expire whole); also the quantity ``depth`` shows at each side."""
        with self._lock:
            if quantity is None:
                self.market.liquidity.pop(symbol, None)
            else:
                self.market.liquidity[symbol] = Decimal(quantity)

    def depth_qty(self, symbol: str) -> Decimal:
        return self.market.liquidity.get(symbol, Decimal(1000))

    def set_commission(self, rate: Decimal | str, asset: str = "received") -> None:
        """Commission ``rate`` charged in the received asset (Binance), quote, base or BNB."""
        if asset not in ("received", "quote", "base", "BNB"):
            raise ValueError(asset)
        with self._lock:
            self.market.commission_rate = Decimal(rate)
            self.market.commission_mode = asset  # type: ignore[assignment]

    def set_rate_limit(self, kind: str, interval: str, interval_num: int, limit: int) -> None:
        """Change one exchangeInfo ``rateLimits`` entry (enforced at once)."""
        with self._lock:
            self.market.set_rate_limit(kind, interval, interval_num, limit)

    @property
    def ban_after_limit_s(self) -> int:
        return self.limits.ban_after_limit_s

    @ban_after_limit_s.setter
    def ban_after_limit_s(self, seconds: int) -> None:
        self.limits.ban_after_limit_s = seconds

    def expire_in_match(self, symbol: str, after: Decimal | str = "0") -> None:
        """Self-trade prevention, once: the next order that takes liquidity on ``symbol``
        fills ``after`` (base quantity), then meets one of the account's own resting orders
        and ends EXPIRED_IN_MATCH with the rest unfilled."""
        with self._lock:
            self.market.in_match[symbol] = Decimal(after)

    def end_order(
        self, client_order_id: str, status: str = "CANCELED", *, account: str | None = None
    ) -> None:
        """End an open order as if someone else did: the user cancelling it on Binance
        (``CANCELED``) or the exchange expiring it (``EXPIRED``). What it filled stays."""
        if status not in ("CANCELED", "EXPIRED"):
            raise ValueError(f"an order is ended CANCELED or EXPIRED, not {status!r}")
        with self._lock:
            for book in self._books(account):
                live = [o for o in book.orders if o.client_id == client_order_id and o.is_open]
                if live:
                    live[-1].status, live[-1].update_ms = status, self.now_ms()
                    book.end_list(live[-1], status)  # ending one leg of an OCO ends the list
                    self.ws_api.publish()
                    return
            raise LookupError(f"no open order {client_order_id!r}")

    def set_trades_lag(self, answers: int) -> None:
        """Trades made from now on are missing from ``myTrades`` for its next ``answers``
        answers (Binance serves myTrades from "Memory => Database": it can lag the order)."""
        with self._lock:
            for book in self._books(None):
                book.trades_lag = answers

    def set_balances(
        self,
        balances: Mapping[str, Decimal | str] | None,
        *,
        lock: bool = True,
        account: str = DEFAULT_ACCOUNT,
    ) -> None:
        """Enforce (and move) an account's balances; None (the default) means unlimited
        funds. With ``lock`` open orders lock what they need, as on Binance: a second
        full-size SELL of the same holding is refused with -2010 (an OCO locks once)."""
        with self._lock:
            self.accounts[account].set_balances(balances, lock=lock)
            self.ws_api.publish()

    # -- inspection ----------------------------------------------------------------------------

    def _books(self, account: str | None) -> list[Book]:
        if account is None:
            return [a.book for a in self.accounts.values()]
        return [self.accounts[account].book]

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(
        self, method: str, path: str, *, account: str | None = None
    ) -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if r.method == method and r.path == path and account in (None, r.account)
        ]

    def orders(
        self, client_order_id: str | None = None, *, account: str | None = None
    ) -> list[dict[str, Any]]:
        """Snapshots (GET /api/v3/order shape) of the orders of one account (or of every
        account), all of them or those with this client id."""
        with self._lock:
            return [
                o.json()
                for book in self._books(account)
                for o in book.orders
                if client_order_id in (None, o.client_id)
            ]

    def order_count(self, client_order_id: str, *, account: str | None = None) -> int:
        return len(self.orders(client_order_id, account=account))

    def posted_client_ids(self, *, account: str | None = None) -> list[str]:
        """Every client order id POSTed, once per POST whatever the answer: single orders
        (``newClientOrderId``) and both legs of each OCO list."""
        ids: list[str] = []
        for r in self.requests:
            if account not in (None, r.account):
                continue
            if r.method == "POST" and r.path == "/api/v3/order":
                ids.append(r.params.get("newClientOrderId", ""))
            elif r.method == "POST" and r.path == OCO:
                ids += [r.params.get(f"{w}ClientOrderId", "") for w in ("above", "below")]
        return ids

    def trades(self, *, account: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [t.my_trade_json() for book in self._books(account) for t in book.trades]

    # -- serving -------------------------------------------------------------------------------

    def now_ms(self) -> int:
        return round(self.clock() * 1000) + self.time_offset_ms

    _now_ms = now_ms

    def handle(self, method: str, target: str, body: str, headers: Mapping[str, str]) -> Reply:
        """Answer one request (``headers`` with lower-case names)."""
        path, _, query = target.partition("?")
        if method == "GET":
            body = ""  # rest-api.md: "For GET endpoints, parameters must be sent as a query string"
        with self._lock:
            fault = None
            account: FakeAccount | None = None
            params: dict[str, str] = {}
            extra: list[tuple[str, str]] = []
            try:
                params = _params(query, body)
                self.limits.gate()
                route = ROUTES.get((method, path))
                if route is None:
                    raise ApiError(404, -1000, f"fake: no route {method} {path}")
                self.limits.charge(route.weight(params))
                fault = self.faults.take(method, path, params)
                if fault is not None and fault.kind is FaultKind.TESTNET_RESET:
                    self.testnet_reset()
                reply = self._pre_fault(fault) if fault and not fault.applies else None
                if reply is None:
                    if route.signed:
                        account = self._authenticate(query, body, params, headers)
                    reply = self._serve(route, Call(self, account, params, fault))
                    if route.orders and reply.status == 200 and account is not None:
                        extra = self.limits.order_headers(account.order_times)
            except RateLimited as exc:
                reply = Reply(exc.status, exc.body(), (("Retry-After", str(exc.retry_after)),))
            except ApiError as exc:
                reply = Reply(exc.status, exc.body())
            reply.headers = (*reply.headers, *self.limits.weight_headers(), *extra)
            self.ws_api.publish()  # the user data stream's events of what this changed
            self._requests.append(
                RecordedRequest(
                    method, path, params, headers.get("x-mbx-apikey"), reply.status,
                    fault.kind if fault else None, account.name if account else None,
                )
            )  # fmt: skip
        if reply.hang is not None:
            reply.hang.wait(HANG_LIMIT_S)
        return reply

    def _pre_fault(self, fault: Fault) -> Reply:
        """A fault answered before the request is looked at: nothing is applied."""
        now = self.clock()
        if fault.kind is FaultKind.RATE_LIMIT:
            self.limits.limited_until = now + fault.retry_after
        elif fault.kind is FaultKind.BAN:
            self.limits.banned_until = now + fault.retry_after
        status, body = fault.error_reply()
        retry = fault.kind in (FaultKind.RATE_LIMIT, FaultKind.BAN)
        return Reply(status, body, (("Retry-After", str(fault.retry_after)),) if retry else ())

    def _authenticate(
        self, query: str, body: str, params: Mapping[str, str], headers: Mapping[str, str]
    ) -> FakeAccount:
        """rest-api.md "SIGNED Endpoint security" and "Timing security"."""
        account = identify(
            {a.api_key: a for a in self.accounts.values()}, headers.get("x-mbx-apikey")
        )
        if not params.get("signature"):
            raise ApiError(
                400, -1102,
                "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.",
            )  # fmt: skip
        verify(
            account.key_type, account.api_secret, account.public_key,
            payload(query, body), params["signature"],
        )  # fmt: skip
        check_timestamp(params, self.now_ms())
        return account

    def _serve(self, route: Route, call: Call) -> Reply:
        fault = call.fault
        if route.orders and call.account is not None:
            self.limits.count_orders(list(call.account.order_times), route.orders)
        if fault is not None and fault.kind is FaultKind.CANCEL_RACE:
            p = call.params
            which = p if fault.fills is None else {**p, "origClientOrderId": fault.fills}
            order = call.me.book.find(which, lookup=False)
            if order is not None and order.is_open:
                call.me.book.fill_now(order)
        answer = route.handler(call)
        if route.orders and call.account is not None:
            call.account.order_times.extend([self.clock()] * route.orders)
        if fault is None or fault.kind is FaultKind.TESTNET_RESET:
            return Reply(200, answer)
        if fault.kind is FaultKind.DROP_AFTER_APPLY:
            return Reply(None)
        if fault.kind in (FaultKind.TIMEOUT_AFTER_APPLY, FaultKind.SERVER_ERROR_AFTER_APPLY):
            return Reply(*fault.error_reply())
        if fault.kind is FaultKind.HANG:
            return self.hang_reply()
        return Reply(200, answer)


def _params(query: str, body: str) -> dict[str, str]:
    """rest-api.md "General Information on Endpoints": parameters from the query string and
    the (form-encoded) body; "If a parameter sent in both ... the query string parameter
    will be used". A name twice in one of them: errors.md -1101 "Duplicate values for a
    parameter detected."."""
    parts = []
    for raw in (body, query):
        pairs = parse_qsl(raw, keep_blank_values=True)
        names = [k for k, _ in pairs]
        if len(names) != len(set(names)):
            raise ApiError(400, -1101, "Duplicate values for a parameter detected.")
        parts.append(dict(pairs))
    return {**parts[0], **parts[1]}
