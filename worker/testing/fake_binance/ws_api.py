"""The fake's WebSocket API: the user data stream of web-socket-api.md, on its own loopback port.

* Requests are JSON text frames ``{"id", "method", "params"}`` (a method may carry a ``v3/``
  prefix), answered ``{"id", "status", "result" | "error", "rateLimits"}`` ("Request
  format", "Response format"); each request costs its weight in the fake's shared
  REQUEST_WEIGHT counter ("IP limits": weight is per IP, whatever the connection).
* SIGNED requests: the params but ``signature``, sorted by name, ``name=value`` joined by
  ``&`` without percent-encoding ("SIGNED request example (HMAC)", step 1), signed as on
  REST (HMAC hex any case, RSA and Ed25519 base64), with ``timestamp``/``recvWindow``.
* ``session.logon`` / ``session.status`` / ``session.logout``: Ed25519 keys only
  ("Session Authentication"). The docs name no error for another key type; client authors
  report an invalid-signature answer (sieblyio/binance#626), so the fake answers -1022.
* ``userDataStream.subscribe`` (a logged-on session), ``userDataStream.subscribe.signature``
  (any key type, any session), ``userDataStream.unsubscribe`` (one ``subscriptionId`` or
  all; each ended subscription gets ``eventStreamTerminated``, user-data-stream.md),
  ``session.subscriptions``. One subscription per account and connection (-2035).
* Events (user-data-stream.md): ``{"subscriptionId": N, "event": {...}}`` with
  ``executionReport`` for every change of an order of the account (placed, each trade,
  cancelled, expired), ``listStatus`` for an order list's changes, and
  ``outboundAccountPosition`` when enforced balances change. ``serverShutdown`` is
  ``{"event": {...}}`` with no subscription id ("Connection events").

The events come from comparing each book with what was last published (:meth:`WsApi.publish`,
called by the server under its lock after anything that may change an order), so every
path that moves an order (REST, :meth:`FakeBinance.set_price`, ``end_order``, faults) is
covered. Faults: :meth:`WsApi.drop_connections` (the TCP connection cut, no close frame)
and :meth:`WsApi.lose_events` (a stream gap: the next events of an account are never sent).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from worker.testing.fake_binance.accounts import FakeAccount, identify
from worker.testing.fake_binance.book import Book
from worker.testing.fake_binance.limits import Limits, RateLimited
from worker.testing.fake_binance.market import Market
from worker.testing.fake_binance.orders import ApiError, Order, Trade, f8
from worker.testing.fake_binance.signatures import BAD_SIGNATURE, check_timestamp, verify

PATH = "/ws-api/v3"
WEIGHT = 2  # every method used here weighs 2 (web-socket-api.md), as does connecting
_FINAL_EXECUTION = {
    "CANCELED": "CANCELED",
    "EXPIRED": "EXPIRED",
    "EXPIRED_IN_MATCH": "TRADE_PREVENTION",  # enums.md "Execution types"
    "REJECTED": "REJECTED",
}


@dataclass
class _Session:
    """One WebSocket connection: its logon, its subscriptions, its outgoing frames."""

    connection: ServerConnection
    connected_ms: int
    logon: FakeAccount | None = None
    logon_ms: int | None = None
    subscriptions: dict[int, FakeAccount] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=itertools.count)
    outbox: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def send(self, message: Mapping[str, Any]) -> None:
        self.outbox.put(json.dumps(message))


@dataclass
class _Seen:
    """What was last published of one order."""

    status: str
    trades: int


class Host(Protocol):
    """What the endpoint uses of the fake (``FakeBinance``)."""

    accounts: dict[str, FakeAccount]
    limits: Limits
    market: Market

    def now_ms(self) -> int: ...


class WsApi:
    """The endpoint; ``FakeBinance`` starts and stops it with its HTTP server, and shares
    its lock (every change of the books happens under it)."""

    def __init__(self, fake: Host, lock: threading.RLock) -> None:
        self.fake, self._lock = fake, lock
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._sessions: list[_Session] = []
        self._books: dict[int, Book] = {}  # every book subscribed to once, by id
        self._seen: dict[int, dict[int, _Seen]] = {}  # id(book) -> order id -> last published
        self._lists: dict[int, dict[int, str]] = {}  # id(book) -> list id -> list status
        self._balances: dict[int, dict[str, Decimal]] = {}  # id(book) -> last published
        self._lose: dict[int, int] = {}  # id(book) -> events still to lose
        self.connections = 0  # connections accepted so far (a reconnect makes one more)
        self._executions = itertools.count(1)

    # -- serving ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._server = serve(self._serve, "127.0.0.1", 0, compression=None)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-binance-ws", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self.drop_connections()
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:<port>/ws-api/v3``: the client's WebSocket API URL."""
        if self._server is None:
            raise RuntimeError("the fake's WebSocket API is not started")
        return f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}{PATH}"

    def _serve(self, connection: ServerConnection) -> None:
        with self._lock:
            self.connections += 1
            session = _Session(connection, self.fake.now_ms())
            self._sessions.append(session)
            with contextlib.suppress(RateLimited):  # the next request is answered 429
                self.fake.limits.charge(WEIGHT)  # "Connecting to WebSocket API costs 2 weight"
        writer = threading.Thread(target=self._write, args=(session,), daemon=True)
        writer.start()
        try:
            for frame in connection:
                self._request(session, frame)
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                if session in self._sessions:
                    self._sessions.remove(session)
            session.outbox.put(None)
            writer.join(timeout=5)

    def _write(self, session: _Session) -> None:
        """Frames go out in the order they were queued: answers and events never cross."""
        while (message := session.outbox.get()) is not None:
            try:
                session.connection.send(message)
            except (ConnectionClosed, OSError):
                return

    # -- requests --------------------------------------------------------------------------------

    def _request(self, session: _Session, frame: str | bytes) -> None:
        request_id: Any = None
        try:
            request = json.loads(frame)
            if not isinstance(request, dict) or not isinstance(request.get("method"), str):
                raise ApiError(400, -1102, "Mandatory parameter 'method' was not sent.")
            request_id = request.get("id")
            params = request.get("params") or {}
            method = request["method"].removeprefix("v3/")
            with self._lock:
                self.fake.limits.gate()
                self.fake.limits.charge(WEIGHT)
                handler = self._METHODS.get(method)
                if handler is None:
                    raise ApiError(400, -1020, "This operation is not supported.")
                result = handler(self, session, params)
                session.send(self._answer(request_id, 200, result=result))
        except RateLimited as exc:
            error = {**exc.body(), "data": {"retryAfter": self.fake.now_ms() + exc.retry_after}}
            session.send(self._answer(request_id, exc.status, error=error))
        except ApiError as exc:
            session.send(self._answer(request_id, exc.status, error=exc.body()))
        except (ValueError, TypeError):
            session.send(self._answer(request_id, 400, error={"code": -1000, "msg": "bad JSON"}))

    def _answer(self, request_id: Any, status: int, **body: Any) -> dict[str, Any]:
        used = self.fake.limits.used_weight()
        limits = [
            {**{k: r[k] for k in ("rateLimitType", "interval", "intervalNum", "limit")},
             "count": used.get(f"{r['intervalNum']}{r['interval'][0]}", 0)}
            for r in self.fake.market.rate_limits
            if r["rateLimitType"] == "REQUEST_WEIGHT"
        ]  # fmt: skip
        return {"id": request_id, "status": status, **body, "rateLimits": limits}

    def _signed(self, params: Mapping[str, Any]) -> FakeAccount:
        """web-socket-api.md "SIGNED request security": apiKey, timestamp, signature."""
        accounts = {a.api_key: a for a in self.fake.accounts.values()}
        account = identify(accounts, _text(params.get("apiKey")))
        signature = _text(params.get("signature"))
        if not signature:
            raise ApiError(
                400, -1102,
                "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.",
            )  # fmt: skip
        signed = "&".join(f"{k}={_text(v)}" for k, v in sorted(params.items()) if k != "signature")
        verify(account.key_type, account.api_secret, account.public_key, signed, signature)
        check_timestamp({k: _text(v) for k, v in params.items()}, self.fake.now_ms())
        return account

    def _status(self, session: _Session) -> dict[str, Any]:
        return {
            "apiKey": session.logon.api_key if session.logon else None,
            "authorizedSince": session.logon_ms,
            "connectedSince": session.connected_ms,
            "returnRateLimits": True,
            "serverTime": self.fake.now_ms(),
            "userDataStream": bool(session.subscriptions),
        }

    def _logon(self, session: _Session, params: Mapping[str, Any]) -> Any:
        account = self._signed(params)
        if account.key_type != "ed25519":
            raise BAD_SIGNATURE  # "Only Ed25519 keys are supported for this feature."
        session.logon, session.logon_ms = account, self.fake.now_ms()
        return self._status(session)

    def _session_status(self, session: _Session, params: Mapping[str, Any]) -> Any:
        return self._status(session)

    def _logout(self, session: _Session, params: Mapping[str, Any]) -> Any:
        """Ends the subscription made by ``userDataStream.subscribe`` (not the signature ones)."""
        for sub_id in [i for i, a in session.subscriptions.items() if a is session.logon]:
            self._end(session, sub_id)
        session.logon = session.logon_ms = None
        return self._status(session)

    def _subscribe(self, session: _Session, params: Mapping[str, Any]) -> Any:
        if session.logon is None:
            raise ApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        return self._start(session, session.logon)

    def _subscribe_signature(self, session: _Session, params: Mapping[str, Any]) -> Any:
        return self._start(session, self._signed(params))

    def _start(self, session: _Session, account: FakeAccount) -> dict[str, int]:
        if any(a.book is account.book for a in session.subscriptions.values()):
            raise ApiError(400, -2035, "User Data Stream subscription already active.")
        if not account.enabled:
            raise ApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        self._baseline(account.book)
        sub_id = next(session.ids)
        session.subscriptions[sub_id] = account
        return {"subscriptionId": sub_id}

    def _unsubscribe(self, session: _Session, params: Mapping[str, Any]) -> Any:
        wanted = params.get("subscriptionId")
        for sub_id in list(session.subscriptions):
            if wanted is None or str(wanted) == str(sub_id):
                self._end(session, sub_id)
        return {}

    def _end(self, session: _Session, sub_id: int) -> None:
        session.subscriptions.pop(sub_id)
        event = {"e": "eventStreamTerminated", "E": self.fake.now_ms()}
        session.send({"subscriptionId": sub_id, "event": event})

    def _subscriptions(self, session: _Session, params: Mapping[str, Any]) -> Any:
        return [{"subscriptionId": i} for i in session.subscriptions]

    def _time(self, session: _Session, params: Mapping[str, Any]) -> Any:
        return {"serverTime": self.fake.now_ms()}

    def _ping(self, session: _Session, params: Mapping[str, Any]) -> Any:
        return {}

    _METHODS: Mapping[str, Callable[[WsApi, _Session, Mapping[str, Any]], Any]] = {
        "session.logon": _logon,
        "session.status": _session_status,
        "session.logout": _logout,
        "userDataStream.subscribe": _subscribe,
        "userDataStream.subscribe.signature": _subscribe_signature,
        "userDataStream.unsubscribe": _unsubscribe,
        "session.subscriptions": _subscriptions,
        "time": _time,
        "ping": _ping,
    }

    # -- faults ----------------------------------------------------------------------------------

    def drop_connections(self, account: str | None = None) -> int:
        """Cut the connections (those subscribed to ``account``, or all) without a close
        frame, as a network failure would; how many were cut."""
        with self._lock:
            book = self.fake.accounts[account].book if account else None
            cut = [
                s for s in self._sessions
                if book is None or any(a.book is book for a in s.subscriptions.values())
            ]  # fmt: skip
            for session in cut:
                self._sessions.remove(session)
        for session in cut:
            session.outbox.put(None)
            with contextlib.suppress(OSError):
                session.connection.socket.shutdown(socket.SHUT_RDWR)
        return len(cut)

    def lose_events(self, count: int, account: str = "default") -> None:
        """A stream gap: the next ``count`` events of ``account`` are never sent (0: from
        now on every event is sent again)."""
        with self._lock:
            self._lose[id(self.fake.accounts[account].book)] = count

    def server_shutdown(self) -> None:
        """The ``serverShutdown`` event on every connection ("Connection events")."""
        with self._lock:
            for session in self._sessions:
                session.send({"event": {"e": "serverShutdown", "E": self.fake.now_ms()}})

    # -- events ----------------------------------------------------------------------------------

    def _baseline(self, book: Book) -> None:
        """Take the book as published (called before its first subscription)."""
        if id(book) not in self._seen:
            self._books[id(book)] = book
            self._seen[id(book)] = {o.order_id: _Seen(o.status, len(o.trades)) for o in book.orders}
            self._lists[id(book)] = {}
            self._balances[id(book)] = dict(book.balances or {})

    def publish(self) -> None:
        """Push the events of what changed in the books since the last call (the server
        calls it under its lock). A change while nobody is subscribed is lost, as on
        Binance: a stream never replays what happened before it started."""
        for key, book in self._books.items():
            events = self._order_events(book) + self._balance_events(book)
            for event in events:
                if self._lose.get(key, 0) > 0:
                    self._lose[key] -= 1
                    continue
                for session in self._sessions:
                    for sub_id, account in session.subscriptions.items():
                        if account.book is book:
                            session.send({"subscriptionId": sub_id, "event": event})

    def forget(self) -> None:
        """A testnet reset: the books are empty, nothing of it is published."""
        for key in list(self._seen):
            self._seen[key], self._lists[key], self._balances[key] = {}, {}, {}

    def _order_events(self, book: Book) -> list[dict[str, Any]]:
        seen, lists = self._seen[id(book)], self._lists[id(book)]
        events: list[dict[str, Any]] = []
        for order in book.orders:
            before = seen.get(order.order_id)
            if before is not None and (before.status, before.trades) == (
                order.status,
                len(order.trades),
            ):
                continue
            events += self._reports(order, before)
            seen[order.order_id] = _Seen(order.status, len(order.trades))
            if order.order_list_id >= 0:
                events += self._list_event(book, order, lists)
        return events

    def _reports(self, order: Order, before: _Seen | None) -> list[dict[str, Any]]:
        """user-data-stream.md "Order Update": NEW once, one TRADE per trade (with the
        totals as of that trade), then the final execution type if it ended unfilled."""
        reports = []
        if before is None:
            reports.append(self._report(order, "NEW", "NEW", None, 0))
        first = before.trades if before else 0
        for n in range(first, len(order.trades)):
            filled = sum((t.qty for t in order.trades[: n + 1]), Decimal(0))
            status = "FILLED" if filled == order.orig_qty else "PARTIALLY_FILLED"
            reports.append(self._report(order, "TRADE", status, order.trades[n], n + 1))
        changed = before is None or before.status != order.status
        if order.status in _FINAL_EXECUTION and changed:
            kind = _FINAL_EXECUTION[order.status]
            reports.append(self._report(order, kind, order.status, None, len(order.trades)))
        return reports

    def _report(
        self, order: Order, execution: str, status: str, trade: Trade | None, trades: int
    ) -> dict[str, Any]:
        done = order.trades[:trades]
        filled = sum((t.qty for t in done), Decimal(0))
        quote = sum((t.qty * t.price for t in done), Decimal(0))
        now = self.fake.now_ms()
        cancelled = execution == "CANCELED"
        event: dict[str, Any] = {
            "e": "executionReport",
            "E": now,
            "s": order.symbol,
            "c": f"cancel{order.order_id}" if cancelled else order.client_id,
            "S": order.side,
            "o": order.type,
            "f": order.time_in_force,
            "q": f8(order.orig_qty),
            "p": f8(order.price),
            "P": f8(order.stop_price),
            "F": f8(order.iceberg_qty),
            "g": order.order_list_id,
            "C": order.client_id if cancelled else "",
            "x": execution,
            "X": status,
            "r": "NONE",
            "i": order.order_id,
            "l": f8(trade.qty if trade else None),
            "z": f8(filled),
            "L": f8(trade.price if trade else None),
            "n": f8(trade.commission) if trade else "0",
            "N": trade.commission_asset if trade else None,
            "T": trade.time_ms if trade else (order.update_ms or order.time_ms),
            "t": trade.id if trade else -1,
            "I": next(self._executions),  # execution id: unique, increasing
            "w": order.is_open and order.is_working,
            "m": trade.is_maker if trade else False,
            "M": False,
            "O": order.time_ms,
            "Z": f8(quote),
            "Y": f8(trade.qty * trade.price if trade else None),
            "Q": f8(order.quote_order_qty),
            "V": order.stp_mode,
        }
        if order.is_working:
            event["W"] = order.time_ms  # "only visible if the order has been placed on the book"
        if execution == "EXPIRED":
            event["eR"] = "OCO_TRIGGER" if order.order_list_id >= 0 else "INSUFFICIENT_LIQUIDITY"
        return event

    def _list_event(self, book: Book, order: Order, lists: dict[int, str]) -> list[dict[str, Any]]:
        """user-data-stream.md ``listStatus``: once when the list starts, once when it ends."""
        legs = [o for o in book.orders if o.order_list_id == order.order_list_id]
        done = not any(o.is_open for o in legs)
        state = "ALL_DONE" if done else "EXECUTING"
        if lists.get(order.order_list_id) == state:
            return []
        lists[order.order_list_id] = state
        now = self.fake.now_ms()
        return [{
            "e": "listStatus", "E": now, "s": order.symbol, "g": order.order_list_id,
            "c": "OCO", "l": "ALL_DONE" if done else "EXEC_STARTED", "L": state, "r": "NONE",
            "C": book.list_client_ids.get(order.order_list_id, ""), "T": now,
            "O": [{"s": o.symbol, "i": o.order_id, "c": o.client_id} for o in legs],
        }]  # fmt: skip

    def _balance_events(self, book: Book) -> list[dict[str, Any]]:
        """``outboundAccountPosition`` with the assets whose balance changed."""
        if book.balances is None:
            return []
        last = self._balances[id(book)]
        changed = sorted(a for a, v in book.balances.items() if last.get(a) != v)
        if not changed:
            return []
        self._balances[id(book)] = dict(book.balances)
        now = self.fake.now_ms()
        balances = [
            {"a": a, "f": f8(book.balances[a] - book.locked(a)), "l": f8(book.locked(a))}
            for a in changed
        ]
        return [{"e": "outboundAccountPosition", "E": now, "u": now, "B": balances}]


def _text(value: Any) -> str:
    """A JSON parameter as it is written in the signature payload."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
