"""Binance's user data stream over the WebSocket API: an account's order updates, pushed.

Binance spot API docs, web-socket-api.md and user-data-stream.md:

* Connect to ``wss://ws-api.binance.com:443/ws-api/v3`` (testnet
  ``wss://ws-api.testnet.binance.vision/ws-api/v3``) and subscribe with
  ``userDataStream.subscribe.signature`` ("User Data Stream requests"): ``apiKey`` and
  ``timestamp`` signed like any SIGNED request (params sorted by name, ``name=value`` joined
  by ``&``, not percent-encoded; HMAC hex, RSA or Ed25519 base64), so every key type works
  (``session.logon`` would take Ed25519 keys only).
* Events arrive as ``{"subscriptionId": N, "event": {...}}``. ``executionReport`` carries
  one order's state after each change: its status ``X``, cumulative quantity ``z`` and
  quote ``Z``, and for a trade (``x`` = TRADE) the trade itself (``t``, ``L``, ``l``,
  ``n``, ``N``, ``T``). A cancelled order's own client id is ``C`` ("the ID of the order
  being canceled"); ``c`` is then the cancel's.
* The server pings every 20 s and expects a pong (the ``websockets`` client answers); a
  connection lasts at most 24 hours (it is replaced after 23.5); ``serverShutdown`` and
  ``eventStreamTerminated`` say the stream ends. Whatever ends it, :class:`UserStream`
  connects and subscribes again, with backoff.

A stream says nothing of what happened while it was down, so every (re)connection calls
``on_connected`` after subscribing and before any event is handled: the caller catches up
over REST then (events that arrive meanwhile wait in the socket). Parsing is pure
(:func:`parse_event`); numbers are Decimal.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from worker.exchanges.base import ClockSkew, ExchangeError, ExchangeFill, OrderState
from worker.exchanges.binance_http import classify_error
from worker.exchanges.errors import CredentialsRejected
from worker.exchanges.signing import Credentials

DEFAULT_WS_API_URL: Final = "wss://ws-api.binance.com:443/ws-api/v3"
TESTNET_WS_API_URL: Final = "wss://ws-api.testnet.binance.vision/ws-api/v3"
FIRST_RETRY_S: Final = 0.2
# "A single connection to the API is only valid for 24 hours": a fresh one before that
CONNECTION_MAX_S: Final = 23.5 * 3600

Timestamp = Callable[[], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """One ``executionReport``: the order as it is after one change (``execution`` is
    ``x``: NEW, TRADE, CANCELED, EXPIRED, TRADE_PREVENTION, ...); ``state.fills`` holds the
    trade this update reports, if it reports one."""

    symbol: str
    execution: str
    state: OrderState
    event_ms: int

    @property
    def client_order_id(self) -> str:
        return self.state.client_order_id


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """``eventStreamTerminated`` or ``serverShutdown``: connect again."""

    reason: str


def parse_event(message: Any) -> OrderUpdate | StreamEnded | None:
    """The meaning of one pushed frame (decoded JSON); None for what the worker does not
    use (balances; order lists, whose orders have their own reports). ValueError when
    unreadable."""
    event = message.get("event") if isinstance(message, Mapping) else None
    if not isinstance(event, Mapping):
        raise ValueError("a pushed frame without an event object")
    kind = event.get("e")
    if kind in ("eventStreamTerminated", "serverShutdown"):
        return StreamEnded(str(kind))
    if kind != "executionReport":
        return None
    try:
        return _order_update(event)
    except (KeyError, TypeError, ArithmeticError) as exc:
        raise ValueError(f"unreadable executionReport: {type(exc).__name__} {exc}") from None


def _order_update(e: Mapping[str, Any]) -> OrderUpdate:
    execution = str(e["x"])
    client_id = str(e["C"]) if execution == "CANCELED" and e.get("C") else str(e["c"])
    fills: tuple[ExchangeFill, ...] = ()
    if execution == "TRADE" and int(e["t"]) >= 0:
        fill = ExchangeFill(
            trade_id=str(e["t"]),
            price=Decimal(str(e["L"])),
            qty=Decimal(str(e["l"])),
            commission=Decimal(str(e["n"] or "0")),
            commission_asset=str(e["N"] or ""),
            time_ms=int(e["T"]),
        )
        fills = (fill,)
    state = OrderState(
        client_order_id=client_id,
        exchange_order_id=str(e["i"]),
        status=str(e["X"]),
        executed_qty=Decimal(str(e["z"])),
        cumulative_quote=Decimal(str(e["Z"])),
        fills=fills,
        raw=dict(e),
    )
    return OrderUpdate(str(e["s"]), execution, state, int(e["E"]))


def signed(credentials: Credentials, params: Mapping[str, Any]) -> dict[str, Any]:
    """web-socket-api.md "SIGNED request security": ``params`` with their ``signature``:
    the params sorted by name, written ``name=value`` joined by ``&`` (no percent-encoding),
    signed with the account's key."""
    payload = "&".join(f"{k}={_text(v)}" for k, v in sorted(params.items()))
    return {**params, "signature": credentials.sign(payload)}


def signed_params(
    credentials: Credentials, timestamp_ms: int, recv_window_ms: int
) -> dict[str, Any]:
    """The params of a subscription (or a logon): the key, the time, their signature."""
    params = {
        "apiKey": credentials.api_key.reveal(),
        "recvWindow": recv_window_ms,
        "timestamp": timestamp_ms,
    }
    return signed(credentials, params)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def reconnect_delay(attempt: int, ceiling_s: float, jitter: float = 0.0) -> float:
    """Seconds to wait before connection attempt ``attempt`` (0: the first retry):
    doubling from :data:`FIRST_RETRY_S` up to ``ceiling_s``, ``jitter`` (0..1) of it random."""
    delay = min(ceiling_s, FIRST_RETRY_S * 2.0 ** min(attempt, 30))
    return delay * (1 - jitter / 2)


class UserStream:
    """One account's user data stream, connected and subscribed again whenever it ends.

    ``timestamp`` gives the ``timestamp`` to sign (the account's REST client: its clock
    offset from the server); the credentials never appear in a log line."""

    def __init__(
        self,
        url: str,
        credentials: Credentials,
        *,
        timestamp: Timestamp,
        log: Any,
        resync: Callable[[], Awaitable[Any]] | None = None,
        recv_window_ms: int = 5_000,
        reconnect_max_s: float = 30.0,
        open_timeout_s: float = 10.0,
        connection_max_s: float = CONNECTION_MAX_S,
    ) -> None:
        self.url, self._credentials = url, credentials
        self._timestamp, self._resync = timestamp, resync
        self._recv_window_ms = recv_window_ms
        self._reconnect_max_s, self._open_timeout_s = reconnect_max_s, open_timeout_s
        self._connection_max_s = connection_max_s
        self.log = log
        self._ids = itertools.count(1)
        self.subscriptions = 0  # successful subscriptions so far (a resubscription adds one)

    def __repr__(self) -> str:
        return f"UserStream({self.url!r}, key=***)"

    async def run(
        self,
        on_update: Callable[[OrderUpdate], Awaitable[None]],
        on_connected: Callable[[], Awaitable[None]],
    ) -> None:
        """Follow the stream until cancelled: ``on_connected`` after each subscription
        (catch up), then ``on_update`` for each order update, in order."""
        attempt = 0
        while True:
            subscribed = self.subscriptions
            try:
                async with connect(
                    self.url, open_timeout=self._open_timeout_s, compression=None, max_queue=None
                ) as ws:
                    try:
                        aged = await self._connected(ws, on_update, on_connected)
                    except anyio.get_cancelled_exc_class():
                        ws.transport.abort()  # no close handshake to wait for: cancelled
                        raise
                    if aged:
                        self.log.info("user_stream_renewed", detail="the 24-hour limit")
                        continue  # at once: the next connection's catch-up covers the switch
            except CredentialsRejected as exc:  # a refused key: retry at the slowest pace
                self.log.error("user_stream_refused", code=exc.code, error=exc.msg)
                attempt, subscribed = max(attempt, 30), self.subscriptions
            except (OSError, TimeoutError, WebSocketException, ExchangeError) as exc:
                self.log.warning("user_stream_lost", error=f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # a callback's trouble: logged, and the stream goes on
                self.log.error(
                    "user_stream_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True
                )
            if self.subscriptions > subscribed:
                attempt = 0  # it worked for a while: start the backoff afresh
            delay = reconnect_delay(attempt, self._reconnect_max_s, random.random())
            attempt += 1
            await anyio.sleep(delay)

    async def _connected(
        self,
        ws: ClientConnection,
        on_update: Callable[[OrderUpdate], Awaitable[None]],
        on_connected: Callable[[], Awaitable[None]],
    ) -> bool:
        """Subscribe, catch up, follow; True when the connection reached its age limit."""
        await self._subscribe(ws)
        await on_connected()
        with anyio.move_on_after(self._connection_max_s) as aged:
            await self._follow(ws, on_update)
        return aged.cancelled_caught

    async def _subscribe(self, ws: ClientConnection) -> None:
        """``userDataStream.subscribe.signature``; a -1021 answer resyncs the clock once."""
        for retry in (False, True):
            timestamp = await self._timestamp()
            params = signed_params(self._credentials, timestamp, self._recv_window_ms)
            try:
                result = await self._call(ws, "userDataStream.subscribe.signature", params)
            except ClockSkew:
                if retry or self._resync is None:
                    raise
                await self._resync()
                continue
            self.subscriptions += 1
            self.log.info("user_stream_subscribed", subscription_id=result.get("subscriptionId"))
            return

    async def _call(self, ws: ClientConnection, method: str, params: Mapping[str, Any]) -> Any:
        """Send one request and wait for its answer (nothing else is pushed before the
        subscription exists)."""
        request_id = next(self._ids)
        await ws.send(json.dumps({"id": request_id, "method": method, "params": dict(params)}))
        with anyio.fail_after(self._open_timeout_s):
            while True:
                answer = json.loads(await ws.recv())
                if answer.get("id") == request_id:
                    break
        if answer.get("status") != 200:
            error = answer.get("error") or {}
            raise classify_error(int(answer.get("status") or 0), error, 60.0)
        return answer.get("result") or {}

    async def _follow(
        self, ws: ClientConnection, on_update: Callable[[OrderUpdate], Awaitable[None]]
    ) -> None:
        async for frame in ws:
            try:
                item = parse_event(json.loads(frame))
            except ValueError as exc:  # one bad frame is skipped: REST polling covers it
                self.log.warning("user_stream_bad_event", error=str(exc))
                continue
            if isinstance(item, StreamEnded):
                self.log.info("user_stream_ended", reason=item.reason)
                return
            if item is not None:
                await on_update(item)
        self.log.warning("user_stream_closed")


__all__ = [
    "DEFAULT_WS_API_URL",
    "TESTNET_WS_API_URL",
    "OrderUpdate",
    "StreamEnded",
    "UserStream",
    "parse_event",
    "reconnect_delay",
    "signed",
    "signed_params",
]
