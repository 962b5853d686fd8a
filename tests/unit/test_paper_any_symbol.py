"""The paper exchange as a new user meets it: any listed symbol, offline, from settings.

Issue 21's report: 20-USDT paper positions on DOGEUSDT, XRPUSDT, ADAUSDT, LINKUSDT and
AVAXUSDT all failed with -1121. Here they trade, on the synthetic feed, with no network.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from worker.exchanges.base import OrderRejected, OrderRequest
from worker.exchanges.paper import from_settings
from worker.exchanges.prices import SyntheticPrices
from worker.exchanges.symbols import StaticSymbols, SymbolSource, reference_price, snapshot
from worker.settings import Settings

pytestmark = pytest.mark.anyio
D = Decimal
REPORTED = ("DOGEUSDT", "XRPUSDT", "ADAUSDT", "LINKUSDT", "AVAXUSDT")
OFFLINE = dataclasses.replace(
    Settings(), paper=dataclasses.replace(Settings().paper, symbols="snapshot")
)


class Clock:
    ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.ms


async def test_the_reported_symbols_trade_for_20_usdt_offline() -> None:
    clock = Clock()
    paper = from_settings(OFFLINE, clock=clock)
    for n, symbol in enumerate(REPORTED):
        rules = await paper.symbol_rules(symbol)
        buy = OrderRequest(symbol, "buy", "market", f"b{n}", quote_quantity=D(20))
        bought = await paper.place_order(buy)
        assert bought.status == "FILLED", symbol
        sell = OrderRequest(symbol, "sell", "market", f"s{n}", quantity=bought.executed_qty)
        sold = await paper.place_order(sell)
        assert sold.status == "FILLED" and sold.executed_qty == bought.executed_qty
        for fill in (*bought.fills, *sold.fills):
            assert fill.price % rules.tick_size == 0 and fill.qty % rules.step_size == 0
        # the synthetic book is spread_bps (2) wide around the mid: the buy paid more
        assert bought.fills[0].price > sold.fills[0].price
    await paper.aclose()


async def test_an_unlisted_symbol_is_refused_by_the_feed_and_the_exchange() -> None:
    paper = from_settings(OFFLINE, clock=Clock())
    for call in (paper.price("BCCUSDT"), paper.symbol_rules("BCCUSDT")):
        with pytest.raises(OrderRejected) as err:
            await call
        assert err.value.code == -1121


async def test_synthetic_feed_joins_a_listed_symbol_at_its_reference_price_on_its_tick() -> None:
    doge = snapshot().get("DOGEUSDT")
    feed = SyntheticPrices({}, seed=3, symbols=StaticSymbols([doge]))
    assert feed.symbols == ()
    assert await feed.price("DOGEUSDT") == reference_price(doge) == D("0.10000")
    walked = feed.advance(50)["DOGEUSDT"]
    assert walked != D("0.10000") and walked % doge.tick_size == 0
    with pytest.raises(OrderRejected, match="-1121"):
        await feed.price("XRPUSDT")  # not in this listing


async def test_same_seed_same_walk_for_any_symbol() -> None:
    listing = SymbolSource(base_url=None, cache_dir=None)
    one, two = (SyntheticPrices({}, seed=5, symbols=listing) for _ in range(2))
    for feed in (one, two):
        await feed.price("ADAUSDT")
        feed.advance(10)
    assert one.current("ADAUSDT") == two.current("ADAUSDT")
