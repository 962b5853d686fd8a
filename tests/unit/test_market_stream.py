"""worker/exchanges/market_stream.py: Binance's public market data for the paper exchange.

Parsing is checked against recorded messages (tests/unit/data/binance_market_messages.jsonl:
the payload shapes of binance-spot-api-docs web-socket-streams.md, combined and raw);
reconnection against a real WebSocket server on loopback; the REST fallback against
bookTicker's JSON at the HTTP transport. None of our own code is replaced.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.server import ServerConnection, serve

from tests.pipeline_support import eventually
from worker.exchanges.base import OrderRejected, OrderRequest, OutcomeUnknown
from worker.exchanges.market_stream import (
    BinanceMarketStream,
    StreamEvent,
    applied,
    rest_book_ticker,
    stream_event,
    streams_url,
)
from worker.exchanges.paper import PaperExchange
from worker.exchanges.paper_book import Quote
from worker.exchanges.prices import PriceFeedStale

pytestmark = pytest.mark.anyio
D = Decimal
RECORDED = Path(__file__).parent / "data" / "binance_market_messages.jsonl"


def recorded() -> list[str]:
    return RECORDED.read_text().splitlines()


# -- parsing ----------------------------------------------------------------------------------


def test_recorded_messages_parse_to_decimal_events() -> None:
    events = [stream_event(line) for line in recorded()]
    assert events == [
        StreamEvent(
            "book",
            "BNBUSDT",
            bid=D("25.35190000"),
            bid_qty=D("31.21000000"),
            ask=D("25.36520000"),
            ask_qty=D("40.66000000"),
        ),
        StreamEvent("trade", "BNBBTC", last=D("0.001")),
        StreamEvent(
            "book",
            "BNBUSDT",
            bid=D("25.35200000"),
            bid_qty=D("1.00000000"),
            ask=D("25.36510000"),
            ask_qty=D("2.50000000"),
        ),
        StreamEvent("trade", "BNBUSDT", last=D("25.36000000")),
        None,  # the SUBSCRIBE answer
        None,  # serverShutdown, combined
        None,  # serverShutdown, raw
        None,  # an error answer
        None,  # a stream we do not read
    ]
    assert all(isinstance(e.bid, Decimal | None) for e in events if e is not None)


def test_a_book_top_then_a_trade_make_one_quote() -> None:
    quote = None
    for now, line in enumerate(recorded()):
        event = stream_event(line)
        if event is not None and event.symbol == "BNBUSDT":
            quote = applied(quote, event, now)
    assert quote == Quote(
        bid=D("25.35200000"),
        ask=D("25.36510000"),
        last=D("25.36000000"),
        bid_qty=D("1.00000000"),
        ask_qty=D("2.50000000"),
        time_ms=3,
    )


def test_a_trade_before_any_book_makes_no_quote_and_a_first_book_takes_its_mid() -> None:
    assert applied(None, StreamEvent("trade", "X", last=D(1)), 0) is None
    book = StreamEvent("book", "X", bid=D(1), bid_qty=D(1), ask=D(3), ask_qty=D(1))
    first = applied(None, book, 5)
    assert first is not None and first.last == D(2)


@pytest.mark.parametrize(
    "message",
    [
        "not json",
        '{"stream":"x@trade","data":{"e":"trade","s":"X"}}',  # no price
        '{"s":"X","b":"1","a":"-2","B":"1","A":"1"}',  # a negative price
        '{"s":"X","b":"1","a":"NaN","B":"1","A":"1"}',
    ],
)
def test_unreadable_messages_are_value_errors(message: str) -> None:
    with pytest.raises(ValueError):
        stream_event(message)


def test_rest_book_ticker_and_the_combined_url() -> None:
    body = json.loads(
        '{"symbol":"LTCBTC","bidPrice":"4.00000000","bidQty":"431.00000000",'
        '"askPrice":"4.00000200","askQty":"9.00000000"}',  # rest-api.md, bookTicker
        parse_float=Decimal,
    )
    assert rest_book_ticker(body) == StreamEvent(
        "book", "LTCBTC", bid=D("4"), bid_qty=D("431"), ask=D("4.000002"), ask_qty=D("9")
    )
    assert streams_url("wss://stream.binance.com:9443/", ["ETHUSDT", "BTCUSDT"]) == (
        "wss://stream.binance.com:9443/stream?streams="
        "btcusdt@bookTicker/btcusdt@trade/ethusdt@bookTicker/ethusdt@trade"
    )


# -- the connection: a WebSocket server on loopback ----------------------------------------------


def book(symbol: str, bid: str, ask: str) -> str:
    data = {"u": 1, "s": symbol, "b": bid, "B": "1.0", "a": ask, "A": "2.0"}
    return json.dumps({"stream": f"{symbol.lower()}@bookTicker", "data": data})


def offline(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("offline", request=request)


async def test_the_stream_reconnects_after_a_drop_and_subscribes_new_symbols_live() -> None:
    paths: list[str] = []
    received: list[Any] = []

    async def exchange(ws: ServerConnection) -> None:
        paths.append(ws.request.path if ws.request else "")
        connection = len(paths)
        await ws.send(book("BTCUSDT", f"{100 + connection}.00", f"{100 + connection}.02"))
        if connection == 1:
            await ws.close(1001, "going away")  # as Binance does at 24 h or on shutdown
            return
        async for message in ws:
            received.append(json.loads(message))

    async with serve(exchange, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        feed = BinanceMarketStream(
            stream_url=f"ws://127.0.0.1:{port}",
            reconnect_min_s=0.01,
            reconnect_max_s=0.05,
            transport=httpx.MockTransport(offline),
        )
        async with anyio.create_task_group() as tg:
            await feed.watch("BTCUSDT")
            await tg.start(feed.run)

            def second_book() -> bool:
                quote = feed.latest("BTCUSDT")
                return quote is not None and quote.bid == D("102.00")

            await eventually(second_book, 5)
            assert feed.connects == 2
            assert paths == ["/stream?streams=btcusdt@bookTicker/btcusdt@trade"] * 2
            assert (await feed.quote("BTCUSDT")).ask == D("102.02")  # fresh: no REST needed

            await feed.watch("ETHUSDT", "SOLUSDT")  # asked together: one SUBSCRIBE
            await eventually(lambda: received, 5)
            names = ["ethusdt@bookTicker", "ethusdt@trade", "solusdt@bookTicker", "solusdt@trade"]
            assert received == [{"method": "SUBSCRIBE", "params": names, "id": 1}]
            tg.cancel_scope.cancel()
        await feed.aclose()


async def test_the_stream_backs_off_while_the_server_is_unreachable() -> None:
    async with serve(lambda ws: ws.close(), "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
    # the server is gone: every attempt is refused
    feed = BinanceMarketStream(
        stream_url=f"ws://127.0.0.1:{port}",
        reconnect_min_s=0.01,
        reconnect_max_s=0.02,
        transport=httpx.MockTransport(offline),
    )
    async with anyio.create_task_group() as tg:
        await feed.watch("BTCUSDT")
        await tg.start(feed.run)
        await eventually(lambda: feed.attempts >= 3, 5)  # refused, again and again
        tg.cancel_scope.cancel()
    assert feed.connects == 0
    with pytest.raises(OutcomeUnknown):  # no stream, no REST, nothing heard: no price
        await feed.quote("BTCUSDT")
    await feed.aclose()


# -- REST fallback and a stale feed ---------------------------------------------------------------


class Clock:
    def __init__(self, ms: int = 1_700_000_000_000) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


class BookTickerRest:
    """``GET /api/v3/ticker/bookTicker`` at the transport: answers, or fails when offline."""

    def __init__(self) -> None:
        self.offline = False
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.offline:
            raise httpx.ConnectError("offline", request=request)
        symbol = request.url.params["symbol"]
        if symbol == "NOPEUSDT":
            return httpx.Response(400, json={"code": -1121, "msg": "Invalid symbol."})
        body = {
            "symbol": symbol,
            "bidPrice": "100.00",
            "bidQty": "0.5",
            "askPrice": "100.02",
            "askQty": "0.7",
        }
        return httpx.Response(200, json=body)


def rest_feed(rest: BookTickerRest, clock: Clock) -> BinanceMarketStream:
    return BinanceMarketStream(
        base_url="https://binance.test", clock=clock, transport=httpx.MockTransport(rest)
    )


async def test_rest_answers_when_the_stream_has_nothing_at_most_once_a_second() -> None:
    rest, clock = BookTickerRest(), Clock()
    feed = rest_feed(rest, clock)
    quote = await feed.quote("BTCUSDT")
    assert (quote.bid, quote.ask, quote.ask_qty, quote.time_ms) == (
        D("100.00"),
        D("100.02"),
        D("0.7"),
        clock.ms,
    )
    assert await feed.price("BTCUSDT") == D("100.01") and rest.calls == 1
    clock.ms += 1_000
    await feed.quote("BTCUSDT")
    assert rest.calls == 2
    with pytest.raises(OrderRejected) as err:
        await feed.quote("NOPEUSDT")
    assert err.value.code == -1121
    await feed.aclose()


async def test_a_stale_feed_holds_new_paper_orders_with_a_clear_reason() -> None:
    rest, clock = BookTickerRest(), Clock()
    feed = rest_feed(rest, clock)
    paper = PaperExchange(feed, clock=clock, stale_after_ms=30_000)
    buy = OrderRequest("BTCUSDT", "buy", "market", "e1", quantity=D("0.1"))
    first = await paper.place_order(buy)
    assert first.status == "FILLED" and first.fills[0].price == D("100.02")  # the ask

    rest.offline = True
    clock.ms += 31_000  # nothing heard for 31 s: the last quote is kept, but too old
    with pytest.raises(PriceFeedStale) as err:
        await paper.place_order(OrderRequest("BTCUSDT", "buy", "market", "e2", quantity=D(1)))
    assert str(err.value) == "held: price feed stale for BTCUSDT (last price 31s ago)"
    assert await paper.get_order("BTCUSDT", "e2") is None  # nothing placed: a retry may send
    assert await paper.price("BTCUSDT") == D("100.01")  # the last price, for a look only

    rest.offline = False  # the feed is back: the same order goes through
    second = await paper.place_order(OrderRequest("BTCUSDT", "buy", "market", "e2", D(1)))
    assert second.status == "FILLED"
    await paper.aclose()
