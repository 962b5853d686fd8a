"""Paper balances (worker/exchanges/paper_funds.py) through the paper exchange with its
in-memory store: holds, fills, fees in every asset, refusals, and a bounded order history.
Hand-computed figures; no servers. The same rules on PostgreSQL:
tests/integration/test_paper_state.py."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from worker.exchanges.base import OrderRejected, OrderRequest
from worker.exchanges.paper import PaperConfig, PaperExchange
from worker.exchanges.paper_store import MemoryPaperStore
from worker.exchanges.prices import FixedPrices

pytestmark = pytest.mark.anyio
D = Decimal
ZERO = D(0)
INSUFFICIENT = "Account has insufficient balance for requested action."


def account(
    starting: dict[str, str], prices: dict[str, str] | None = None, **config: Any
) -> tuple[FixedPrices, PaperExchange, MemoryPaperStore]:
    feed = FixedPrices({k: D(v) for k, v in (prices or {"BTCUSDT": "100"}).items()})
    store = MemoryPaperStore({k: D(v) for k, v in starting.items()})
    paper = PaperExchange(feed, clock=lambda: 0, config=PaperConfig(**config), store=store)
    return feed, paper.for_account("user-a"), store


def market(cid: str, side: str, qty: str, symbol: str = "BTCUSDT") -> OrderRequest:
    return OrderRequest(symbol, side, "market", cid, D(qty))  # type: ignore[arg-type]


def limit(cid: str, side: str, qty: str, price: str) -> OrderRequest:
    return OrderRequest("BTCUSDT", side, "limit", cid, D(qty), price=D(price))  # type: ignore[arg-type]


async def test_a_market_round_trip_with_fees_in_quote() -> None:
    feed, paper, _ = account({"USDT": "1000"})
    await paper.place_order(market("b", "buy", "2"))  # 200 + 0.2 fee
    assert await paper.balances() == {"USDT": (D("799.8"), ZERO), "BTC": (D(2), ZERO)}
    feed.set("BTCUSDT", D("90"))
    await paper.place_order(market("s", "sell", "2"))  # 180 - 0.18 fee
    assert await paper.balances() == {"USDT": (D("979.62"), ZERO), "BTC": (ZERO, ZERO)}


async def test_fee_in_base_on_a_buy_leaves_less_base_and_a_sell_pays_in_quote() -> None:
    _, paper, _ = account({"USDT": "1000"}, fee_asset="base")
    await paper.place_order(market("b", "buy", "2"))  # fee 0.002 BTC
    assert await paper.balances() == {"USDT": (D(800), ZERO), "BTC": (D("1.998"), ZERO)}
    await paper.place_order(market("s", "sell", "1.998"))  # fee 0.1998 USDT
    assert await paper.balances() == {"USDT": (D("999.6002"), ZERO), "BTC": (ZERO, ZERO)}


async def test_fee_in_bnb_needs_bnb() -> None:
    prices = {"BTCUSDT": "100", "BNBUSDT": "500"}
    _, paper, _ = account({"USDT": "1000", "BNB": "0.001"}, prices, fee_asset="BNB")
    await paper.place_order(market("b1", "buy", "2"))  # fee 0.2 USDT = 0.0004 BNB
    assert (await paper.balances())["BNB"] == (D("0.0006"), ZERO)
    with pytest.raises(OrderRejected, match=INSUFFICIENT):  # 0.0008 BNB > 0.0006
        await paper.place_order(market("b2", "buy", "4"))
    assert (await paper.balances())["USDT"] == (D(800), ZERO)


async def test_a_resting_limit_holds_its_quote_then_fills_as_maker() -> None:
    _, paper, _ = account({"USDT": "1000"}, maker_fee=D("0.0005"))
    await paper.place_order(limit("l", "buy", "5", "95"))  # holds 475 + 0.475 (largest fee)
    assert await paper.balances() == {"USDT": (D("524.525"), D("475.475"))}
    with pytest.raises(OrderRejected, match=INSUFFICIENT):  # what it holds is not free
        await paper.place_order(market("m", "buy", "6"))
    await paper.on_price_tick("BTCUSDT", D("94"))  # fills at 95, maker fee 0.2375
    assert await paper.balances() == {"USDT": (D("524.7625"), ZERO), "BTC": (D(5), ZERO)}


async def test_partial_fills_release_what_they_spend_and_the_end_releases_the_rest() -> None:
    _, paper, _ = account({"USDT": "1000"}, taker_fee=ZERO, maker_fee=ZERO)
    paper.set_liquidity("BTCUSDT", D(2))
    await paper.place_order(limit("l", "buy", "5", "95"))
    await paper.on_price_tick("BTCUSDT", D("90"))  # 2 @ 95
    assert await paper.balances() == {"USDT": (D(525), D(285)), "BTC": (D(2), ZERO)}
    await paper.cancel_order("BTCUSDT", "l")
    assert await paper.balances() == {"USDT": (D(810), ZERO), "BTC": (D(2), ZERO)}


async def test_a_sell_holds_its_base_and_a_short_needs_the_asset() -> None:
    _, paper, _ = account({"USDT": "1000", "BTC": "1"})
    with pytest.raises(OrderRejected) as refused:
        await paper.place_order(market("s", "sell", "1.5"))
    assert (refused.value.code, refused.value.msg) == (-2010, INSUFFICIENT)
    await paper.place_order(limit("l", "sell", "1", "110"))
    assert (await paper.balances())["BTC"] == (ZERO, D(1))
    assert await paper.open_orders() != []


async def test_accounts_are_separate() -> None:
    _, paper, store = account({"USDT": "100"})
    other = PaperExchange(FixedPrices({"BTCUSDT": D(100)}), clock=lambda: 0, store=store)
    b = other.for_account("user-b")
    await paper.place_order(market("x", "buy", "0.5"))
    assert await b.balances() == {"USDT": (D(100), ZERO)}
    assert await b.get_order("BTCUSDT", "x") is None
    assert await b.open_orders() == []


async def test_the_in_memory_history_is_bounded() -> None:
    feed = FixedPrices({"BTCUSDT": D(100)})
    store = MemoryPaperStore(None, keep_final=50)
    paper = PaperExchange(feed, clock=lambda: 0, store=store)
    for n in range(500):
        await paper.place_order(market(f"m{n}", "buy", "0.1"))
    await paper.place_order(limit("rest", "buy", "0.1", "90"))
    assert len(store._orders) == 51 and len(store._by_client_id) == 51
    assert await paper.get_order("BTCUSDT", "m0") is None  # forgotten
    assert await paper.get_order("BTCUSDT", "m499") is not None
    assert [o.client_order_id for o in await paper.open_orders()] == ["rest"]
