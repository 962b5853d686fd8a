"""Binance's public market data for the paper exchange: best bid/ask and trades over WebSocket,
REST when the stream has nothing fresh. No key.

* Streams (web-socket-streams.md): one combined connection,
  ``wss://stream.binance.com:9443/stream?streams=btcusdt@bookTicker/btcusdt@trade``; events
  arrive wrapped as ``{"stream": NAME, "data": PAYLOAD}``. ``<symbol>@bookTicker`` gives the
  best bid ``b``/``B`` and ask ``a``/``A``; ``<symbol>@trade`` the last trade's price ``p``.
  A symbol first asked for while connected is added with a ``SUBSCRIBE`` message.
* :meth:`BinanceMarketStream.run` keeps the connection: it reconnects after any drop (the
  server closes every connection at 24 h, and sends ``serverShutdown`` first) with a backoff
  doubling from ``reconnect_min_s`` to ``reconnect_max_s``. Pings are answered by the
  ``websockets`` library.
* REST (rest-api.md): ``GET /api/v3/ticker/bookTicker?symbol=X`` (weight 2) answers a symbol
  the stream has not spoken of for ``rest_after_ms``: before the stream is up, for a quiet
  symbol, or when the stream is down.
* A quote records when *we* heard it (our clock): when neither source answers, the last
  quote is returned as it is, and the paper exchange, seeing its age, holds new orders.

Every number is read as a :class:`~decimal.Decimal` from its JSON string; nothing goes
through a float. The parsers (:func:`stream_event`, :func:`rest_book_ticker`) are pure.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Final, Literal
from urllib.parse import urlencode

import anyio
import httpx
from anyio.abc import TaskStatus
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from worker.exchanges.binance_http import BinanceHttp, HttpOwner, RateLimitGate
from worker.exchanges.errors import ExchangeError, OrderRejected, OutcomeUnknown
from worker.exchanges.paper_book import Quote
from worker.logs import get_logger

__all__ = [
    "DEFAULT_STREAM_URL",
    "BinanceMarketStream",
    "StreamEvent",
    "rest_book_ticker",
    "stream_event",
    "streams_url",
]

DEFAULT_STREAM_URL: Final = "wss://stream.binance.com:9443"
DEFAULT_REST_URL: Final = "https://api.binance.com"
SUBSCRIBE_EVERY_S: Final = 0.25  # control messages count toward 5 a second per connection

ClockMs = Callable[[], int]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


# -- parsing (pure) -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One market event: a book top (bid/ask and their sizes) or a trade (``last``)."""

    kind: Literal["book", "trade"]
    symbol: str
    bid: Decimal | None = None
    bid_qty: Decimal | None = None
    ask: Decimal | None = None
    ask_qty: Decimal | None = None
    last: Decimal | None = None


def stream_event(message: str | bytes) -> StreamEvent | None:
    """A combined-stream message (or a raw one) as an event; None for anything else: a
    subscription's answer (``{"result": null, "id": 1}``), ``serverShutdown``, other streams.
    ValueError for a message that is not JSON or lacks a field its event must have."""
    body = json.loads(message, parse_float=Decimal)
    if not isinstance(body, Mapping):
        return None
    data = body.get("data", body)
    if not isinstance(data, Mapping):
        return None
    try:
        if data.get("e") == "trade":
            return StreamEvent("trade", str(data["s"]), last=_dec(data["p"]))
        if "e" not in data and {"b", "a", "s"} <= data.keys():  # bookTicker has no "e"
            return StreamEvent(
                "book",
                str(data["s"]),
                bid=_dec(data["b"]),
                bid_qty=_dec(data["B"]),
                ask=_dec(data["a"]),
                ask_qty=_dec(data["A"]),
            )
    except KeyError as exc:
        raise ValueError(f"market event without {exc}") from None
    return None


def rest_book_ticker(body: Mapping[str, Any]) -> StreamEvent:
    """``GET /api/v3/ticker/bookTicker?symbol=X``'s answer as a book event."""
    return StreamEvent(
        "book",
        str(body["symbol"]),
        bid=_dec(body["bidPrice"]),
        bid_qty=_dec(body["bidQty"]),
        ask=_dec(body["askPrice"]),
        ask_qty=_dec(body["askQty"]),
    )


def applied(quote: Quote | None, event: StreamEvent, now_ms: int) -> Quote | None:
    """``quote`` updated by ``event`` heard at ``now_ms``. A trade before any book top makes
    no quote (there is no bid or ask yet); a book top keeps the last trade, or its mid."""
    if event.kind == "trade":
        assert event.last is not None
        return None if quote is None else replace(quote, last=event.last, time_ms=now_ms)
    assert event.bid is not None and event.ask is not None
    last = quote.last if quote is not None else (event.bid + event.ask) / 2
    return Quote(event.bid, event.ask, last, event.bid_qty, event.ask_qty, now_ms)


def streams_url(base: str, symbols: Iterable[str]) -> str:
    """The combined-stream URL for ``symbols``' bookTicker and trade streams."""
    return f"{base.rstrip('/')}/stream?streams=" + "/".join(stream_names(symbols))


def stream_names(symbols: Iterable[str]) -> list[str]:
    """Stream names are lowercase (web-socket-streams.md)."""
    return [f"{s.lower()}@{kind}" for s in sorted(symbols) for kind in ("bookTicker", "trade")]


def _dec(value: Any) -> Decimal:
    number = Decimal(str(value))
    if not number.is_finite() or number < 0:
        raise ValueError(f"not a price or size: {value!r}")
    return number


# -- the feed -----------------------------------------------------------------------------------


class BinanceMarketStream(HttpOwner):
    """A :class:`~worker.exchanges.prices.QuoteFeed` on Binance's public market data.

    Without :meth:`run` (not started by its owner) every quote comes from REST, at most one
    request per symbol per ``rest_after_ms``."""

    def __init__(
        self,
        *,
        stream_url: str = DEFAULT_STREAM_URL,
        base_url: str = DEFAULT_REST_URL,
        timeout_s: float = 5.0,
        rest_after_ms: int = 1_000,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        clock: ClockMs = wall_clock_ms,
        gate: RateLimitGate | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._stream_url, self._timeout_s = stream_url, timeout_s
        self._rest_after_ms = rest_after_ms
        self._backoff = (reconnect_min_s, reconnect_max_s)
        self._clock = clock
        self._http = BinanceHttp(base_url, gate or RateLimitGate(), timeout_s, transport)
        self._quotes: dict[str, Quote] = {}
        self._wanted: set[str] = set()
        self._wanted_changed = anyio.Event()
        self._request_id = 0
        self.attempts = 0  # connections tried so far
        self.connects = 0  # connections opened so far
        self.messages = 0  # stream messages received so far
        self.log = get_logger("worker.exchanges.market_stream")

    def __repr__(self) -> str:
        return f"BinanceMarketStream(stream_url={self._stream_url!r})"

    # -- the feed ------------------------------------------------------------------------------

    async def price(self, symbol: str) -> Decimal:
        """The last trade (else the book's mid)."""
        return (await self.quote(symbol)).last

    async def quote(self, symbol: str) -> Quote:
        """The freshest quote: the stream's, else REST's, else the last one heard (stale)."""
        await self._want(symbol)
        known = self._quotes.get(symbol)
        if known is not None and self._age_ms(known) < self._rest_after_ms:
            return known
        try:
            body = await self._http.send(
                "GET", "/api/v3/ticker/bookTicker", urlencode({"symbol": symbol})
            )
            self.on_event(rest_book_ticker(body))
        except OrderRejected:  # -1121 and the like: Binance's answer, whatever we heard before
            raise
        except ExchangeError:
            if known is None:
                raise
        except (KeyError, TypeError, ValueError) as exc:
            if known is None:
                raise OutcomeUnknown(f"unreadable bookTicker for {symbol}: {exc}") from exc
        quote = self._quotes.get(symbol)
        assert quote is not None  # REST answered, or an older quote was kept
        return quote

    async def watch(self, *symbols: str) -> None:
        """Subscribe to ``symbols`` now (a quote subscribes to its symbol anyway)."""
        for symbol in symbols:
            await self._want(symbol)

    def latest(self, symbol: str) -> Quote | None:
        """The last quote heard for ``symbol``, however old; None before any."""
        return self._quotes.get(symbol)

    def on_message(self, message: str | bytes) -> None:
        """Apply one stream message; one that cannot be read is logged and skipped."""
        try:
            event = stream_event(message)
        except ValueError as exc:
            self.log.warning("market_message_unreadable", error=str(exc))
            return
        self.messages += 1
        if event is not None:
            self.on_event(event)

    def on_event(self, event: StreamEvent) -> None:
        quote = applied(self._quotes.get(event.symbol), event, self._clock())
        if quote is not None:
            self._quotes[event.symbol] = quote

    def _age_ms(self, quote: Quote) -> int:
        return self._clock() - (quote.time_ms or 0)

    # -- the connection ------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep one combined-stream connection for the symbols asked for, until cancelled."""
        task_status.started()
        delay = self._backoff[0]
        while True:
            if not self._wanted:
                await self._wanted_changed.wait()
            heard = self.messages
            self.attempts += 1
            try:
                await self._connected()
            except (OSError, TimeoutError, WebSocketException) as exc:
                self.log.warning("market_stream_down", error=repr(exc), retry_in_s=delay)
            if self.messages > heard:  # it worked: the backoff starts again
                delay = self._backoff[0]
            await anyio.sleep(delay)  # even after a clean close: never a reconnect storm
            delay = min(delay * 2, self._backoff[1])

    async def _connected(self) -> None:
        """One connection, until it drops: messages read, new symbols subscribed beside."""
        symbols = set(self._wanted)
        url = streams_url(self._stream_url, symbols)
        async with connect(url, open_timeout=self._timeout_s, max_size=2**20) as ws:
            self.connects += 1
            self.log.info("market_stream_connected", symbols=len(symbols))
            dropped: WebSocketException | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._subscriber, ws, symbols)
                try:
                    async for message in ws:
                        self.on_message(message)
                except WebSocketException as exc:  # raised below, not in an exception group
                    dropped = exc
                tg.cancel_scope.cancel()
        if dropped is not None:
            raise dropped
        self.log.info("market_stream_closed", code=ws.close_code)

    async def _want(self, symbol: str) -> None:
        if symbol not in self._wanted:
            self._wanted.add(symbol)
            self._wanted_changed.set()
            self._wanted_changed = anyio.Event()

    async def _subscriber(self, ws: ClientConnection, subscribed: set[str]) -> None:
        """``SUBSCRIBE`` the symbols asked for since the connection opened, in one message
        at most every :data:`SUBSCRIBE_EVERY_S` (web-socket-streams.md, "Live
        Subscribing/Unsubscribing"; "WebSocket Limits": 5 incoming messages a second)."""
        with contextlib.suppress(WebSocketException):  # closed: the reader sees it too
            while True:
                changed = self._wanted_changed
                new = self._wanted - subscribed
                if not new:
                    await changed.wait()
                    continue
                self._request_id += 1
                names = stream_names(new)
                message = {"method": "SUBSCRIBE", "params": names, "id": self._request_id}
                await ws.send(json.dumps(message))
                subscribed |= new
                await anyio.sleep(SUBSCRIBE_EVERY_S)
