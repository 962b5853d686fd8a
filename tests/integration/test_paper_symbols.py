"""Paper trading on any Binance symbol, offline: the done-when of issue 21 (parts 1-3).

Twenty symbols drawn at random (seeded) from the shipped snapshot each open and close a paper
position through the real engine, on the paper exchange with the synthetic feed and no
network: the listing is the snapshot (no URL to fetch from), the prices the snapshot's
reference prices. Every fill sits on the symbol's tick and step, and every order is above its
minimum notional.
"""

from __future__ import annotations

import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import ROUND_UP, Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.execution_support import (
    KEY,
    SECRET,
    call_off_loop,
    exec_settings,
    new_position,
    orders,
    position,
    trades,
    wait_status,
)
from tests.pipeline_support import eventually
from worker.app import App
from worker.cli import main
from worker.db.paper_store import PgPaperStore
from worker.exchanges.base import OrderRejected, OrderRequest
from worker.exchanges.binance import BinanceClient
from worker.exchanges.filters import SymbolRules, round_quantity
from worker.exchanges.market_stream import BinanceMarketStream
from worker.exchanges.paper import PaperExchange, wall_clock_ms
from worker.exchanges.paper_book import PaperConfig
from worker.exchanges.paper_store import PaperStore
from worker.exchanges.prices import SyntheticPrices
from worker.exchanges.symbols import (
    SymbolSource,
    SymbolTable,
    read_payload,
    reference_price,
    snapshot,
)
from worker.execution.routing import ExchangeRouter
from worker.testing.fake_binance import FakeBinance
from worker.testing.servers import free_port

pytestmark = pytest.mark.anyio
D = Decimal
SEED = 21


def drawn(n: int = 20, seed: int = SEED) -> list[str]:
    return random.Random(seed).sample(sorted(snapshot().rules), n)


def entry_quantity(rules: SymbolRules) -> Decimal:
    """Three times the minimum notional at the reference price, up to a step, >= minQty."""
    wanted = rules.min_notional * 3 / reference_price(rules)
    steps = (wanted / rules.step_size).to_integral_value(ROUND_UP)
    return max(round_quantity(rules, steps * rules.step_size), rules.min_qty)


@asynccontextmanager
async def paper_worker(db_url: str, redis_url: str, paper: PaperExchange) -> AsyncIterator[App]:
    app = App(
        exec_settings(db_url, redis_url), handle_signals=False, router=ExchangeRouter(paper=paper)
    )
    async with app.serving():
        yield app


def offline_paper(store: PaperStore | None = None) -> tuple[SyntheticPrices, PaperExchange]:
    listing = SymbolSource(base_url=None, cache_dir=None)  # never fetches: the snapshot
    feed = SyntheticPrices({}, seed=SEED, symbols=listing)  # moved only by the test
    config = PaperConfig(slippage_bps=D(5), spread_bps=D(2), depth_quote=D(0))
    paper = PaperExchange(feed, clock=wall_clock_ms, config=config, rules=listing, store=store)
    return feed, paper


def test_the_draw_spans_quote_assets_and_is_seeded() -> None:
    symbols = drawn()
    assert symbols == drawn() and len(set(symbols)) == 20
    assert len({snapshot().get(s).quote_asset for s in symbols}) > 1


async def test_twenty_random_symbols_open_and_close_on_their_grids_offline(
    db_url: str, redis_url: str
) -> None:
    symbols = drawn()
    # The worker's own paper state (PostgreSQL), each user starting with every quote asset
    # the draw needs, as an operator would set paper.starting_balances.
    quotes = {snapshot().get(s).quote_asset for s in symbols}
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=4, open=False)
    await pool.open()
    store = PgPaperStore(pool, {asset: D("1000000") for asset in quotes})
    feed, paper = offline_paper(store)
    pids: dict[uuid.UUID, SymbolRules] = {}
    for symbol in symbols:
        rules = snapshot().get(symbol)
        _, pid = new_position(
            db_url, symbol=symbol, quantity=entry_quantity(rules), is_paper_trade=True
        )
        pids[pid] = rules
    async with pool, paper_worker(db_url, redis_url, paper):
        for pid in pids:
            await wait_status(db_url, pid, "monitoring", "failed", timeout=60)
        failed = {r.symbol: position(db_url, p)["failure_reason"] for p, r in pids.items()}
        assert {s: why for s, why in failed.items() if why} == {}
        feed.advance(5)  # the market moves before the exits
        for pid in pids:
            await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
        for pid in pids:
            await wait_status(db_url, pid, "closed", timeout=60)

    for pid, rules in pids.items():
        rows = orders(db_url, pid)
        assert [(o["purpose"], o["side"], o["status"]) for o in rows] == [
            ("entry", "buy", "filled"),
            ("exit", "sell", "filled"),
        ], rules.symbol
        fills = trades(db_url, pid)
        assert fills, rules.symbol
        for fill in fills:
            assert fill["is_paper_trade"] and fill["symbol"] == rules.symbol
            assert fill["price"] % rules.tick_size == 0, (rules.symbol, fill["price"])
            assert fill["quantity"] % rules.step_size == 0, (rules.symbol, fill["quantity"])
        for order in rows:
            mine = [f for f in fills if f["order_id"] == order["id"]]
            notional = sum(f["price"] * f["quantity"] for f in mine)
            assert notional >= rules.min_notional, (rules.symbol, order["purpose"], notional)
        opened = position(db_url, pid)
        assert opened["status"] == "closed" and opened["is_paper_trade"]
    # every paper order is in PostgreSQL, filled, and nothing is left held
    assert call_rows(db_url, "SELECT DISTINCT status FROM paper_orders") == [("FILLED",)]
    assert call_rows(db_url, "SELECT count(*) FROM paper_balances WHERE locked <> 0") == [(0,)]


async def test_a_symbol_the_listing_lacks_fails_with_binance_invalid_symbol(
    db_url: str, redis_url: str
) -> None:
    _, paper = offline_paper()
    _, pid = new_position(db_url, symbol="BCCUSDT", quantity=D("1"), is_paper_trade=True)
    async with paper_worker(db_url, redis_url, paper):
        await wait_status(db_url, pid, "failed")
    reason = position(db_url, pid)["failure_reason"]
    assert reason == "BCCUSDT: rejected (-1121): Invalid symbol."  # as live trading says


# -- paper.feed = "binance": a Binance-speaking stream server on loopback ----------------------


def doge_rest(request: httpx.Request) -> httpx.Response:
    """``GET /api/v3/ticker/bookTicker``: the first quote of a symbol, before its stream."""
    assert request.url.path == "/api/v3/ticker/bookTicker"
    body = {"symbol": "DOGEUSDT", "bidPrice": "0.10000", "bidQty": "5000", "askPrice": "0.10002"}
    return httpx.Response(200, json={**body, "askQty": "5000"})


async def test_a_paper_position_trades_on_the_binance_feed_rest_first_then_the_stream(
    db_url: str, redis_url: str
) -> None:
    subscribed: list[str] = []
    moved = anyio.Event()  # the market moves once the position is open

    async def binance(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:  # the worker subscribes once it first quotes a symbol
                subscribed.extend(json.loads(message)["params"])
                await moved.wait()
                data = {"u": 7, "s": "DOGEUSDT", "b": "0.12000", "B": "9000", "a": "0.12003"}
                book = {"stream": "dogeusdt@bookTicker", "data": {**data, "A": "9000"}}
                await ws.send(json.dumps(book))

    async with serve(binance, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        feed = BinanceMarketStream(
            stream_url=f"ws://127.0.0.1:{port}",
            base_url="https://binance.test",
            transport=httpx.MockTransport(doge_rest),
        )
        listing = SymbolSource(base_url=None, cache_dir=None)
        paper = PaperExchange(feed, clock=wall_clock_ms, rules=listing, stale_after_ms=30_000)
        _, pid = new_position(db_url, symbol="DOGEUSDT", quantity=D("100"), is_paper_trade=True)
        await feed.watch("BTCUSDT")  # something to connect for before the position's symbol
        async with paper_worker(db_url, redis_url, paper):
            await wait_status(db_url, pid, "monitoring")
            moved.set()

            def streamed() -> bool:
                quote = feed.latest("DOGEUSDT")
                return quote is not None and quote.bid == D("0.12000")

            await eventually(streamed, 10)
            await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
            await wait_status(db_url, pid, "closed")
        await paper.aclose()
    assert "dogeusdt@bookTicker" in subscribed and feed.connects >= 1
    entry, exit_ = (trades(db_url, pid)[0], trades(db_url, pid)[-1])
    assert (entry["side"], entry["price"]) == ("buy", D("0.10002"))  # REST's ask
    assert (exit_["side"], exit_["price"]) == ("sell", D("0.12000"))  # the stream's bid


# -- position-worker refresh-symbols ------------------------------------------------------------


def test_refresh_symbols_writes_a_snapshot_from_the_exchange(
    fake: FakeBinance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("POSITION_WORKER__BINANCE__BASE_URL", fake.base_url)
    out = tmp_path / "exchange_info.json.gz"
    assert main(["refresh-symbols", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.endswith(f"/api/v3/exchangeInfo written to {out}")
    payload = read_payload(out)
    assert payload["source"]["url"] == f"{fake.base_url}/api/v3/exchangeInfo"
    table = SymbolTable.of(payload, "file")
    assert "BTCUSDT" in table and table.get("BTCUSDT").tick_size > 0


def test_refresh_symbols_fills_the_cache_the_worker_reads(
    fake: FakeBinance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSITION_WORKER__BINANCE__BASE_URL", fake.base_url)
    monkeypatch.setenv("POSITION_WORKER__PAPER__SYMBOLS_CACHE_DIR", str(tmp_path))
    assert main(["refresh-symbols"]) == 0
    assert "BTCUSDT" in SymbolTable.of(read_payload(tmp_path / "exchange_info.json.gz"), "c")


def test_refresh_symbols_offline_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("POSITION_WORKER__BINANCE__BASE_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("POSITION_WORKER__PAPER__SYMBOLS_CACHE_DIR", str(tmp_path))
    assert main(["refresh-symbols"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("position-worker: cannot fetch http://")
    assert list(tmp_path.iterdir()) == []


class ManualClock:
    def __init__(self) -> None:
        self.ms = wall_clock_ms()

    def __call__(self) -> int:
        return self.ms


class SwitchableRest:
    """bookTicker at the transport, for any symbol at 1.0000/1.0002; ``offline`` refuses."""

    def __init__(self) -> None:
        self.offline = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.offline:
            raise httpx.ConnectError("offline", request=request)
        symbol = request.url.params["symbol"]
        body = {"symbol": symbol, "bidPrice": "1.0000", "bidQty": "1000", "askPrice": "1.0002"}
        return httpx.Response(200, json={**body, "askQty": "1000"})


async def test_a_stale_feed_holds_a_paper_entry_without_failing_it_until_prices_return(
    db_url: str, redis_url: str
) -> None:
    clock, rest = ManualClock(), SwitchableRest()
    feed = BinanceMarketStream(
        stream_url="ws://127.0.0.1:9",  # no stream: REST only
        base_url="https://binance.test",
        clock=clock,
        transport=httpx.MockTransport(rest),
    )
    listing = SymbolSource(base_url=None, cache_dir=None)
    paper = PaperExchange(feed, clock=clock, rules=listing, stale_after_ms=30_000)
    await feed.quote("ADAUSDT")  # heard once, then nothing for 31 s
    rest.offline, clock.ms = True, clock.ms + 31_000
    _, pid = new_position(db_url, symbol="ADAUSDT", quantity=D("10"), is_paper_trade=True)
    async with paper_worker(db_url, redis_url, paper) as app:
        await wait_status(db_url, pid, "submitting")
        watcher = app.watcher
        assert watcher is not None
        passes = watcher.passes
        await eventually(lambda: watcher.passes >= passes + 3, 15)  # three looks: still held
        assert position(db_url, pid)["status"] == "submitting"
        [entry] = orders(db_url, pid)
        assert entry["status"] == "created" and entry["send_attempts"] >= 1
        rest.offline = False  # prices again: the held entry is sent and fills at the ask
        await wait_status(db_url, pid, "monitoring")
    await paper.aclose()
    [fill] = trades(db_url, pid)
    assert (fill["side"], fill["price"], fill["quantity"]) == ("buy", D("1.0002"), D("10"))


async def test_paper_and_live_refuse_an_unlisted_symbol_in_the_same_words(
    fake: FakeBinance,
) -> None:
    async with BinanceClient(KEY, SECRET, base_url=fake.base_url) as client:
        with pytest.raises(OrderRejected) as live:
            await client.symbol_rules("BCCUSDT")
    _, paper = offline_paper()
    with pytest.raises(OrderRejected) as simulated:
        await paper.place_order(OrderRequest("BCCUSDT", "buy", "market", "x", quantity=D(1)))
    assert (simulated.value.code, str(simulated.value)) == (live.value.code, str(live.value))
    assert str(live.value) == "rejected (-1121): Invalid symbol."


def call_rows(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(sql).fetchall()
