"""worker/exchanges/symbols.py: the listing of every symbol, from cache, Binance or snapshot.

Binance's endpoint is stood in for at the HTTP transport (httpx.MockTransport answering
exchangeInfo's JSON), never by replacing our own code; the cache is a real directory.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from worker.exchanges.base import FilterViolation, OrderRejected
from worker.exchanges.binance_answers import rules_from_exchange_info
from worker.exchanges.filters import check_order, round_quantity
from worker.exchanges.paper import PaperExchange
from worker.exchanges.prices import FixedPrices
from worker.exchanges.symbols import (
    KEPT_FIELDS,
    StaticSymbols,
    SymbolSource,
    SymbolsUnavailable,
    SymbolTable,
    default_cache_dir,
    read_payload,
    reference_price,
    snapshot,
    trimmed,
)

pytestmark = pytest.mark.anyio
D = Decimal
URL = "https://binance.test"


def info(symbol: str, status: str = "TRADING", tick: str = "0.01") -> dict[str, Any]:
    """One exchangeInfo symbol, as Binance answers it (rest-api.md, Exchange information)."""
    return {
        "symbol": symbol,
        "status": status,
        "baseAsset": symbol[:-4],
        "quoteAsset": symbol[-4:],
        "baseAssetPrecision": 8,
        "icebergAllowed": True,  # not kept
        "orderTypes": ["LIMIT", "MARKET", "STOP_LOSS_LIMIT"],
        "ocoAllowed": True,
        "permissionSets": [["SPOT"]],
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000", "tickSize": tick},
            {"filterType": "LOT_SIZE", "minQty": "0.1", "maxQty": "9000", "stepSize": "0.1"},
            {"filterType": "NOTIONAL", "minNotional": "5", "applyMinToMarket": True},
        ],
    }


def answer(*symbols: dict[str, Any]) -> dict[str, Any]:
    return {"timezone": "UTC", "serverTime": 1, "rateLimits": [], "symbols": list(symbols)}


class Binance:
    """exchangeInfo over a MockTransport: ``body`` answered, or ``fail`` raised; ``calls``."""

    def __init__(self, body: dict[str, Any] | None = None) -> None:
        self.body = body or answer(info("NEWUSDT"), info("OLDUSDT", status="BREAK"))
        self.fail = False
        self.calls: list[httpx.URL] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request.url)
        if self.fail:
            raise httpx.ConnectError("offline", request=request)
        return httpx.Response(200, json=self.body)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def source(
    tmp_path: Path, binance: Binance, clock: Callable[[], float], **options: Any
) -> SymbolSource:
    return SymbolSource(
        base_url=URL,
        cache_dir=tmp_path,
        ttl_s=100.0,
        retry_s=30.0,
        clock=clock,
        transport=binance.transport(),
        **options,
    )


# -- the snapshot ------------------------------------------------------------------------------


def test_snapshot_lists_every_trading_symbol_with_real_filters() -> None:
    table = snapshot()
    assert table.source == "snapshot" and len(table) == 1248
    for name in ("BTCUSDT", "DOGEUSDT", "XRPUSDT", "ADAUSDT", "LINKUSDT", "AVAXUSDT", "ETHBTC"):
        rules = table.get(name)
        assert rules.tick_size > 0 and rules.step_size > 0 and rules.min_notional > 0
    btc = table.get("BTCUSDT")
    assert (btc.base_asset, btc.quote_asset, btc.tick_size) == ("BTC", "USDT", D("0.01"))
    assert (btc.step_size, btc.min_notional) == (D("0.00001"), D("5"))


def test_snapshot_records_where_it_comes_from() -> None:
    origin = snapshot().origin
    assert origin["answered_at"] == "2024-09-08T17:36:48Z"
    assert "davijr/robo-investimentos" in origin["via"]
    assert "2ddcc41d5f3a2d0e496f35158cd45d3d22be2055" in origin["via"]


def test_snapshot_symbols_read_as_the_live_client_reads_them() -> None:
    """One parser: the live client's exchangeInfo reading gives the snapshot's rules."""
    path = Path(__file__).resolve().parents[2] / "worker/exchanges/data/exchange_info.json.gz"
    payload = json.loads(gzip.decompress(path.read_bytes()))
    for name in ("BTCUSDT", "SHIBUSDT", "ETHBTC"):
        assert rules_from_exchange_info(payload, name) == snapshot().get(name)
    assert {k for s in payload["symbols"] for k in s} <= set(KEPT_FIELDS)


def test_reference_prices_are_on_the_tick_and_let_a_min_notional_order_fit() -> None:
    for rules in snapshot().rules.values():
        price = reference_price(rules)
        assert price > 0 and price % rules.tick_size == 0, rules.symbol
        quantity = max(round_quantity(rules, rules.min_notional * 2 / price), rules.min_qty)
        check_order(rules, quantity, price)  # an order of twice minNotional is valid there


async def test_unknown_and_delisted_symbols_are_invalid_symbol_as_on_binance() -> None:
    for name in ("NOSUCHUSDT", "btcusdt"):
        with pytest.raises(OrderRejected) as err:
            snapshot().get(name)
        assert err.value.code == -1121 and "Invalid symbol" in err.value.msg
        assert not isinstance(err.value, FilterViolation)
    table = SymbolTable.of(answer(info("NEWUSDT"), info("OLDUSDT", status="BREAK")), "test")
    assert list(table) == ["NEWUSDT"]
    with pytest.raises(OrderRejected, match="-1121"):
        await StaticSymbols(table.rules.values()).rules("OLDUSDT")


async def test_paper_exchange_refuses_an_unlisted_symbol_like_live_trading() -> None:
    """BCCUSDT was delisted in 2018: it has a price here, but no listing."""
    paper = PaperExchange(FixedPrices({"BCCUSDT": D("1")}), clock=lambda: 0)
    with pytest.raises(OrderRejected) as err:
        await paper.symbol_rules("BCCUSDT")
    assert str(err.value) == "rejected (-1121): Invalid symbol."  # Binance's words (errors.md)


def test_trimmed_keeps_trading_symbols_and_the_client_fields() -> None:
    kept = trimmed(answer(info("NEWUSDT"), info("OLDUSDT", status="HALT")), {"url": URL})
    assert kept["source"] == {"url": URL}
    [symbol] = kept["symbols"]
    assert symbol["symbol"] == "NEWUSDT" and "icebergAllowed" not in symbol
    assert symbol["filters"][0]["filterType"] == "PRICE_FILTER"


# -- the source: cache, Binance, snapshot ------------------------------------------------------


async def test_nothing_is_read_or_fetched_before_the_first_lookup(tmp_path: Path) -> None:
    binance = Binance()
    source(tmp_path, binance, Clock())
    assert binance.calls == [] and list(tmp_path.iterdir()) == []


async def test_fetched_list_is_cached_and_the_cache_serves_until_its_ttl(tmp_path: Path) -> None:
    binance, clock = Binance(), Clock()
    first = source(tmp_path, binance, clock)
    assert (await first.table()).source == "binance"
    assert (await first.rules("NEWUSDT")).tick_size == D("0.01")
    assert [c.params.get("permissions") for c in binance.calls] == ["SPOT"]
    cached = read_payload(tmp_path / "exchange_info.json.gz")
    assert cached["source"] == {"url": f"{URL}/api/v3/exchangeInfo", "fetched_at": 1_000_000}

    clock.now += 99  # a restarted worker within the TTL reads the cache, no request
    again = source(tmp_path, binance, clock)
    assert (await again.table()).source == "cache" and len(binance.calls) == 1

    binance.body = answer(info("NEWUSDT", tick="0.001"))
    clock.now += 2  # past the TTL: fetched again, in place
    assert (await again.rules("NEWUSDT")).tick_size == D("0.001")
    assert (await first.rules("NEWUSDT")).tick_size == D("0.001")
    assert len(binance.calls) == 2


class Sleeps:
    """The keeper's sleep: each one asked for is recorded and lasts until ``wake()``."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self.asleep = anyio.Event()
        self._wake = anyio.Event()

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        self.asleep.set()
        await self._wake.wait()
        self._wake = anyio.Event()

    async def wake_and_wait_for_the_next(self) -> None:
        self.asleep = anyio.Event()
        self._wake.set()
        with anyio.fail_after(5):
            await self.asleep.wait()


async def test_a_kept_table_is_loaded_at_once_and_no_lookup_waits_for_a_reload(
    tmp_path: Path,
) -> None:
    """The worker keeps the listing (``keep``): loaded before any order asks, reloaded as
    it expires by the keeper alone, so an order never waits on exchangeInfo."""
    binance, clock, sleeps = Binance(), Clock(), Sleeps()
    kept = source(tmp_path, binance, clock, sleep=sleeps)
    async with anyio.create_task_group() as tg:
        tg.start_soon(kept.keep)
        with anyio.fail_after(5):
            await sleeps.asleep.wait()
        assert len(binance.calls) == 1 and sleeps.asked == [100.0]  # until the TTL

        binance.body = answer(info("NEWUSDT", tick="0.001"))
        clock.now += 101  # expired: a lookup still takes the table in hand, no request
        assert (await kept.rules("NEWUSDT")).tick_size == D("0.01")
        assert len(binance.calls) == 1

        await sleeps.wake_and_wait_for_the_next()  # the keeper reloads
        assert (await kept.rules("NEWUSDT")).tick_size == D("0.001")
        assert len(binance.calls) == 2
        tg.cancel_scope.cancel()

    binance.body = answer(info("NEWUSDT", tick="0.1"))
    clock.now += 101  # nobody keeps it any more: the lookup reloads, as without a keeper
    assert (await kept.rules("NEWUSDT")).tick_size == D("0.1")
    assert len(binance.calls) == 3


async def test_offline_falls_back_to_the_snapshot_and_waits_before_trying_again(
    tmp_path: Path,
) -> None:
    binance, clock = Binance(), Clock()
    binance.fail = True
    offline = source(tmp_path, binance, clock)
    table = await offline.table()
    assert table.source == "snapshot" and "DOGEUSDT" in table
    assert offline.last_error is not None and "offline" in offline.last_error
    clock.now += 29  # within the retry pause: the snapshot serves, no request
    await offline.table()
    assert len(binance.calls) == 1
    binance.fail = False
    clock.now += 1
    assert (await offline.table()).source == "binance" and offline.last_error is None


async def test_an_expired_cache_beats_the_snapshot_when_offline(tmp_path: Path) -> None:
    binance, clock = Binance(), Clock()
    await source(tmp_path, binance, clock).table()
    binance.fail = True
    clock.now += 10_000
    table = await source(tmp_path, binance, clock).table()
    assert table.source == "cache" and list(table) == ["NEWUSDT"]


async def test_an_unreadable_cache_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "exchange_info.json.gz").write_bytes(b"not gzip")
    binance = Binance()
    binance.fail = True
    assert (await source(tmp_path, binance, Clock()).table()).source == "snapshot"


async def test_no_url_never_fetches(tmp_path: Path) -> None:
    listing = SymbolSource(base_url=None, cache_dir=tmp_path)
    assert (await listing.table()).source == "snapshot"
    with pytest.raises(SymbolsUnavailable):
        await listing.refresh()


async def test_a_non_exchange_info_answer_is_unavailable(tmp_path: Path) -> None:
    binance = Binance({"code": -1000, "msg": "nope"})
    with pytest.raises(SymbolsUnavailable, match="not an exchangeInfo answer"):
        await source(tmp_path, binance, Clock()).refresh()


async def test_refresh_writes_a_snapshot_file_for_maintainers(tmp_path: Path) -> None:
    out = tmp_path / "snap" / "exchange_info.json.gz"
    table = await source(tmp_path / "cache", Binance(), Clock()).refresh(out)
    assert list(table) == ["NEWUSDT"] and read_payload(out)["symbols"][0]["symbol"] == "NEWUSDT"
    assert not (tmp_path / "cache").exists()


def test_default_cache_dir_follows_xdg() -> None:
    assert default_cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/position-worker")
    assert default_cache_dir({}).name == "position-worker"
