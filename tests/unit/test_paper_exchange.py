"""worker/exchanges/paper.py: the in-memory exchange, checked against hand-computed figures.

Fills go through worker.accounting.fold exactly as the engine records them, so every fee path
(quote, base, BNB) is checked end to end. No servers, no wall clock.
"""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.accounting import Fill, Market, fee_in_quote, fold, quantize_percent
from worker.exchanges.base import (
    DuplicateOrder,
    Exchange,
    ExchangeFill,
    FilterViolation,
    OrderRejected,
    OrderRequest,
    OrderState,
    OrderType,
    OutcomeUnknown,
    Side,
    UnknownOrder,
)
from worker.exchanges.paper import PaperConfig, PaperExchange, from_settings
from worker.exchanges.paper_book import split
from worker.exchanges.prices import BinanceMarketStream, FixedPrices, SyntheticPrices
from worker.exchanges.symbols import snapshot
from worker.settings import Settings

pytestmark = pytest.mark.anyio
D = Decimal
BTC = Market("BTC", "USDT")
BTC_RULES = snapshot().get("BTCUSDT")
T0 = 1_700_000_000_000


class ManualClock:
    def __init__(self, ms: int = T0) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def make(
    prices: dict[str, str] | None = None, **config: Any
) -> tuple[FixedPrices, PaperExchange, ManualClock]:
    feed = FixedPrices({k: D(v) for k, v in (prices or {"BTCUSDT": "100"}).items()})
    clock = ManualClock()
    cfg = PaperConfig(**config)
    return feed, PaperExchange(feed, clock=clock, config=cfg), clock


def order(
    cid: str,
    side: Side = "buy",
    kind: OrderType = "market",
    qty: str | None = "0.5",
    *,
    symbol: str = "BTCUSDT",
    price: str | None = None,
    stop: str | None = None,
    quote: str | None = None,
) -> OrderRequest:
    return OrderRequest(
        symbol, side, kind, cid,
        quantity=D(qty) if qty is not None else None,
        quote_quantity=D(quote) if quote is not None else None,
        price=D(price) if price is not None else None,
        stop_price=D(stop) if stop is not None else None,
    )  # fmt: skip


def booked(side: Side, fills: list[ExchangeFill], bnb_price: str | None = None) -> list[Fill]:
    """The accounting fills the engine would record (fee valued at fill time)."""
    third = D(bnb_price) if bnb_price is not None else None
    return [
        Fill(side, f.price, f.qty, f.commission, f.commission_asset,
             fee_in_quote(f.commission, f.commission_asset, BTC, f.price, third), f.trade_id)
        for f in fills
    ]  # fmt: skip


def one_fill(state: OrderState) -> ExchangeFill:
    assert len(state.fills) == 1, state
    return state.fills[0]


# -- market orders, slippage, fees ---------------------------------------------------------------


async def test_market_buy_fee_in_quote() -> None:
    _, paper, clock = make()
    state = await paper.place_order(order("e1"))
    fill = one_fill(state)
    assert (state.status, state.executed_qty, state.cumulative_quote) == ("FILLED", D("0.5"), D(50))
    assert (fill.price, fill.qty, fill.commission, fill.commission_asset) == (
        D(100), D("0.5"), D("0.05"), "USDT",
    )  # fmt: skip
    assert fill.time_ms == clock.ms and state.exchange_order_id == "1"
    figures = fold("long", BTC, booked("buy", [fill]))
    assert (figures.entry_cost, figures.held_quantity, figures.fees_paid) == (
        D("50.05"), D("0.5"), D("0.05"),
    )  # fmt: skip


async def test_reference_worked_example_through_the_paper_exchange() -> None:
    """The accounting worked example: buy 0.5@100, 0.5@110, sell 0.4@120, 0.6@90, 0.1 % in USDT."""
    feed, paper, _ = make()
    fills: list[Fill] = []
    steps: list[tuple[Side, str, str]] = [
        ("buy", "100", "0.5"), ("buy", "110", "0.5"), ("sell", "120", "0.4")
    ]  # fmt: skip
    for i, (side, price, qty) in enumerate(steps):
        feed.set("BTCUSDT", D(price))
        state = await paper.place_order(order(f"w{i}", side, qty=qty))
        fills += booked(side, list(state.fills))
    partial = fold("long", BTC, fills)
    assert (partial.realized_pnl, partial.held_quantity, partial.entry_price) == (
        D("5.910"), D("0.6"), D(105),
    )  # fmt: skip
    feed.set("BTCUSDT", D("90"))
    fills += booked("sell", list((await paper.place_order(order("w3", "sell", qty="0.6"))).fills))
    closed = fold("long", BTC, fills)
    assert closed.is_flat and closed.realized_pnl == D("-3.207")
    assert quantize_percent(closed.realized_pnl_percent) == D("-3.0512")


async def test_slippage_is_adverse_to_the_taker() -> None:
    _, paper, _ = make(slippage_bps=D(10))
    buy = one_fill(await paper.place_order(order("b")))
    sell = one_fill(await paper.place_order(order("s", "sell")))
    assert (buy.price, buy.commission) == (D("100.10"), D("0.05005"))
    assert (sell.price, sell.commission) == (D("99.90"), D("0.04995"))
    figures = fold("long", BTC, booked("buy", [buy]) + booked("sell", [sell]))
    assert figures.is_flat and figures.realized_pnl == D("-0.2")  # 49.90005 - 50.10005


async def test_fee_in_base_is_the_received_asset_and_reduces_the_holding() -> None:
    feed, paper, _ = make(fee_asset="base")
    buy = one_fill(await paper.place_order(order("b", qty="1.0")))
    assert (buy.commission, buy.commission_asset) == (D("0.001"), "BTC")
    held = fold("long", BTC, booked("buy", [buy])).held_quantity
    assert held == D("0.999")
    feed.set("BTCUSDT", D(110))
    sell = one_fill(await paper.place_order(order("s", "sell", qty=str(held))))
    assert (sell.commission, sell.commission_asset) == (D("0.10989"), "USDT")
    figures = fold("long", BTC, booked("buy", [buy]) + booked("sell", [sell]))
    assert figures.is_flat and figures.realized_pnl == D("9.78011")  # 109.89 - 0.10989 - 100
    assert figures.fees_paid == D("0.20989")


async def test_fee_in_bnb_is_valued_at_the_bnb_price_of_its_fill() -> None:
    feed, paper, _ = make({"BTCUSDT": "100", "BNBUSDT": "500"}, fee_asset="BNB")
    buy = one_fill(await paper.place_order(order("b")))
    assert (buy.commission, buy.commission_asset) == (D("0.0001"), "BNB")  # 0.05 USDT / 500
    feed.set("BTCUSDT", D(120))
    feed.set("BNBUSDT", D(400))
    sell = one_fill(await paper.place_order(order("s", "sell")))
    assert (sell.commission, sell.commission_asset) == (D("0.00015"), "BNB")  # 0.06 / 400
    figures = fold("long", BTC, booked("buy", [buy], "500") + booked("sell", [sell], "400"))
    assert figures.entry_cost == D("50.05") and figures.fees_paid == D("0.11")
    assert figures.realized_pnl == D("9.89")  # 60 - 0.06 - 50.05


async def test_bnb_fee_on_bnbusdt_is_the_base_asset() -> None:
    _, paper, _ = make({"BNBUSDT": "500"}, fee_asset="BNB")
    fill = one_fill(await paper.place_order(order("b", symbol="BNBUSDT", qty="1")))
    assert (fill.commission, fill.commission_asset) == (D("0.001"), "BNB")


async def test_bnb_fee_without_a_bnb_price_refuses_the_order_and_records_nothing() -> None:
    _, paper, _ = make(fee_asset="BNB")
    with pytest.raises(OrderRejected, match="BNBUSDT"):
        await paper.place_order(order("b"))
    assert await paper.get_order("BTCUSDT", "b") is None


async def test_market_order_by_quote_quantity() -> None:
    _, paper, _ = make(slippage_bps=D(10))
    state = await paper.place_order(order("q", qty=None, quote="50"))
    assert one_fill(state).price == D("100.10")
    assert state.executed_qty == D("0.49950")  # 50 / 100.10, floored to 0.00001


# -- limit, stop-loss, take-profit ---------------------------------------------------------------


async def test_a_poll_matches_every_symbol_it_can_price_when_one_cannot_be() -> None:
    """The reconcile pass polls the whole paper book: one symbol without a price (its
    feed down, delisted) must not keep the others' resting orders from filling."""
    feed, paper, _ = make({"BTCUSDT": "100", "ETHUSDT": "3000"})
    await paper.place_order(order("eth", kind="limit", price="2900", symbol="ETHUSDT"))
    await paper.place_order(order("btc", kind="limit", price="95"))
    del feed._prices["ETHUSDT"]  # the feed no longer knows it: unknown_symbol (-1121)
    feed.set("BTCUSDT", D(94))
    (fill,) = await paper.poll()
    assert fill.price == D(95)
    eth = await paper.open_orders("ETHUSDT")
    assert [(o.client_order_id, o.status) for o in eth] == [("eth", "NEW")]


async def test_limit_order_rests_then_fills_at_its_limit_as_maker() -> None:
    feed, paper, clock = make(maker_fee=D("0.0005"))
    placed = await paper.place_order(order("l", kind="limit", price="95"))
    assert (placed.status, placed.fills, placed.executed_qty) == ("NEW", (), D(0))
    feed.set("BTCUSDT", D(96))
    assert await paper.poll() == []
    feed.set("BTCUSDT", D(94))
    clock.ms += 5_000
    (fill,) = await paper.poll()
    assert (fill.price, fill.qty, fill.commission, fill.time_ms) == (
        D(95), D("0.5"), D("0.02375"), T0 + 5_000,
    )  # fmt: skip
    state = await paper.get_order("BTCUSDT", "l")
    assert state is not None
    assert (state.status, state.executed_qty, state.cumulative_quote, state.fills) == (
        "FILLED", D("0.5"), D("47.5"), (),
    )  # fmt: skip
    assert await paper.get_fills("BTCUSDT", state.exchange_order_id) == [fill]


async def test_resting_order_fills_when_the_worker_next_looks_at_it() -> None:
    feed, paper, _ = make()
    await paper.place_order(order("l", "sell", "limit", price="105"))
    feed.set("BTCUSDT", D(106))
    state = await paper.get_order("BTCUSDT", "l")  # no poll(): the lookup reads the feed
    assert state is not None and state.status == "FILLED" and state.average_price == D(105)


async def test_limit_that_crosses_on_arrival_is_a_taker_at_the_market() -> None:
    _, paper, _ = make(slippage_bps=D(10), maker_fee=D(0))
    fill = one_fill(await paper.place_order(order("l", kind="limit", price="105")))
    assert (fill.price, fill.commission) == (D("100.10"), D("0.05005"))
    capped = one_fill(await paper.place_order(order("c", kind="limit", price="100.05")))
    assert capped.price == D("100.05")  # slippage never goes beyond the limit


async def test_stop_loss_triggers_when_the_price_falls_through_it() -> None:
    feed, paper, _ = make(slippage_bps=D(10))
    await paper.place_order(order("sl", "sell", "stop_loss", stop="90"))
    assert await paper.on_price_tick("BTCUSDT", D("95")) == []
    assert [o.client_order_id for o in (await paper.open_orders())] == ["sl"]
    feed.set("BTCUSDT", D("89.5"))
    (fill,) = await paper.poll()
    assert fill.price == D("89.41")  # 89.5 less 10 bps, rounded down to the tick
    state = await paper.get_order("BTCUSDT", "sl")
    assert state is not None and state.status == "FILLED" and (await paper.open_orders()) == []


async def test_take_profit_triggers_when_the_price_rises_through_it() -> None:
    _, paper, _ = make()
    await paper.place_order(order("tp", "sell", "take_profit", stop="120"))
    assert await paper.on_price_tick("BTCUSDT", D("119.99")) == []
    (fill,) = await paper.on_price_tick("BTCUSDT", D("121"))
    assert (fill.price, fill.qty) == (D(121), D("0.5"))


async def test_buy_stop_loss_of_a_short_triggers_on_the_way_up() -> None:
    _, paper, _ = make()
    await paper.place_order(order("ssl", "buy", "stop_loss", stop="110"))
    assert await paper.on_price_tick("BTCUSDT", D(105)) == []
    assert [f.price for f in await paper.on_price_tick("BTCUSDT", D(111))] == [D(111)]


STOPS_FIRING_AT_100 = [("sell", "stop_loss", "101"), ("sell", "take_profit", "99"),
                       ("buy", "stop_loss", "99"), ("buy", "take_profit", "101")]  # fmt: skip


@pytest.mark.parametrize(("side", "kind", "stop"), STOPS_FIRING_AT_100)
async def test_a_stop_that_would_fire_at_once_is_rejected(
    side: Side, kind: OrderType, stop: str
) -> None:
    _, paper, _ = make()
    with pytest.raises(OrderRejected) as err:
        await paper.place_order(order("x", side, kind, stop=stop))
    assert err.value.code == -2010 and await paper.get_order("BTCUSDT", "x") is None


async def test_stop_limit_takes_the_market_when_it_fires_then_rests_at_its_limit() -> None:
    _, paper, _ = make()
    await paper.place_order(order("a", "sell", "stop_loss", stop="90", price="89"))
    assert [f.price for f in await paper.on_price_tick("BTCUSDT", D("89.5"))] == [D("89.5")]
    await paper.place_order(order("b", "sell", "stop_loss", stop="90", price="89"))
    assert await paper.on_price_tick("BTCUSDT", D(88)) == []  # fired, but below its limit
    assert [f.price for f in await paper.on_price_tick("BTCUSDT", D("89.2"))] == [D(89)]


async def test_scripted_synthetic_path_fires_a_stop_loss_for_the_demo() -> None:
    feed = SyntheticPrices({"BTCUSDT": D(50_000)}, seed=1)
    paper = PaperExchange(feed, clock=ManualClock(), config=PaperConfig(taker_fee=D(0)))
    await paper.place_order(order("entry", qty="0.01"))
    await paper.place_order(order("stop", "sell", "stop_loss", qty="0.01", stop="49000"))
    feed.script("BTCUSDT", [D(49_500), D(48_900)], hold=True)
    feed.advance(2)
    (fill,) = await paper.poll()
    assert (fill.price, fill.qty) == (D(48_900), D("0.01"))


# -- partial fills and liquidity -----------------------------------------------------------------


async def test_partial_fills_sum_to_the_order_quantity_with_distinct_trade_ids() -> None:
    _, paper, _ = make(partial_fills=3)
    state = await paper.place_order(order("p", qty="1"))
    assert [f.qty for f in state.fills] == [D("0.33333"), D("0.33333"), D("0.33334")]
    assert len({f.trade_id for f in state.fills}) == 3
    assert sum(f.commission for f in state.fills) == D("0.1")
    assert (state.status, state.executed_qty, state.cumulative_quote) == ("FILLED", D(1), D(100))
    figures = fold("long", BTC, booked("buy", list(state.fills)))
    assert (figures.entry_quantity, figures.entry_cost) == (D(1), D("100.1"))


@settings(max_examples=150, deadline=None)
@given(units=st.integers(1, 10**7), parts=st.integers(1, 9))
def test_split_is_step_aligned_and_exact(units: int, parts: int) -> None:
    quantity = units * BTC_RULES.step_size
    pieces = split(BTC_RULES, quantity, parts)
    assert sum(pieces) == quantity and 1 <= len(pieces) <= parts
    assert all(p > 0 and p % BTC_RULES.step_size == 0 for p in pieces)


async def test_thin_liquidity_expires_a_market_order_partly_filled() -> None:
    _, paper, _ = make()
    paper.set_liquidity("BTCUSDT", D("0.3"))
    state = await paper.place_order(order("m", qty="1"))
    assert (state.status, state.executed_qty) == ("EXPIRED", D("0.3"))


async def test_thin_liquidity_fills_a_limit_over_several_ticks_then_it_can_be_cancelled() -> None:
    _, paper, _ = make()
    paper.set_liquidity("BTCUSDT", D("0.3"))
    await paper.place_order(order("l", qty="1", kind="limit", price="95"))
    await paper.on_price_tick("BTCUSDT", D(94))
    await paper.on_price_tick("BTCUSDT", D(94))
    cancelled = await paper.cancel_order("BTCUSDT", "l")
    assert (cancelled.status, cancelled.executed_qty) == ("CANCELED", D("0.6"))
    paper.set_liquidity("BTCUSDT", None)
    assert (await paper.place_order(order("m", qty="1"))).status == "FILLED"


# -- client ids, filters, rejections -------------------------------------------------------------


async def test_client_id_of_an_open_order_is_a_duplicate() -> None:
    _, paper, _ = make({"BTCUSDT": "100", "ETHUSDT": "3000"})
    await paper.place_order(order("dup", kind="limit", price="90"))
    for symbol, qty in (("BTCUSDT", "0.5"), ("ETHUSDT", "0.01")):
        with pytest.raises(DuplicateOrder) as err:
            await paper.place_order(order("dup", symbol=symbol, qty=qty))
        assert isinstance(err.value, OutcomeUnknown) and err.value.code == -2010
    assert len(await paper.open_orders()) == 1


async def test_client_id_of_a_final_order_may_be_reused_and_lookups_see_the_latest() -> None:
    _, paper, _ = make()
    first = await paper.place_order(order("again"))
    await paper.place_order(order("rest", kind="limit", price="90"))
    await paper.cancel_order("BTCUSDT", "rest")
    second = await paper.place_order(order("again", "sell"))
    reused = await paper.place_order(order("rest", kind="limit", price="80"))
    assert first.exchange_order_id != second.exchange_order_id
    latest = await paper.get_order("BTCUSDT", "again")
    assert latest is not None and latest.exchange_order_id == second.exchange_order_id
    assert [o.exchange_order_id for o in (await paper.open_orders())] == [reused.exchange_order_id]


@pytest.mark.parametrize(
    ("req", "reason"),
    [
        (order("f", qty="0.000001"), "quantity 0 below minQty"),  # floored to the step
        (order("f", qty="-1"), "quantity must be positive"),
        (order("f", qty="0.01"), "notional 1"),
        (order("f", qty="9001"), "above maxQty"),
        (order("f", kind="limit", price="0.001"), "price must be positive"),
        (order("f", qty=None, quote="4"), "below minNotional"),
    ],
)
async def test_filter_violations_are_refused_before_anything_is_recorded(
    req: OrderRequest, reason: str
) -> None:
    _, paper, _ = make()
    with pytest.raises(FilterViolation, match=reason):
        await paper.place_order(req)
    assert await paper.get_order("BTCUSDT", "f") is None
    assert (await paper.place_order(order("ok"))).exchange_order_id == "1"


async def test_quantity_is_floored_to_the_step_and_price_rounded_to_the_tick() -> None:
    _, paper, _ = make()
    state = await paper.place_order(order("r", qty="0.123456", kind="limit", price="90.004"))
    assert state.raw["origQty"] == "0.12345" and state.raw["price"] == "90.00"


async def test_unknown_symbol_is_invalid_symbol_everywhere() -> None:
    _, paper, _ = make({"BTCUSDT": "100", "FOOUSDT": "1"})
    calls = [
        paper.place_order(order("u", symbol="FOOUSDT")),
        paper.get_order("FOOUSDT", "u"),
        paper.cancel_order("FOOUSDT", "u"),
        paper.get_fills("FOOUSDT", "1"),
        paper.symbol_rules("FOOUSDT"),
    ]
    for call in calls:
        with pytest.raises(OrderRejected) as err:
            await call
        assert err.value.code == -1121 and not isinstance(err.value, FilterViolation)


async def test_reject_next_refuses_queued_orders_then_lets_orders_through() -> None:
    _, paper, _ = make({"BTCUSDT": "100", "ETHUSDT": "3000"})
    paper.reject_next("BTCUSDT")
    paper.reject_next(None, -1013, "Filter failure: NOTIONAL")
    with pytest.raises(OrderRejected) as first:
        await paper.place_order(order("r1"))
    with pytest.raises(OrderRejected) as second:
        await paper.place_order(order("r2", symbol="ETHUSDT", qty="0.01"))
    assert (first.value.code, first.value.msg) == (
        -2010, "Account has insufficient balance for requested action.",
    )  # fmt: skip
    assert second.value.code == -1013
    assert await paper.get_order("BTCUSDT", "r1") is None
    assert (await paper.place_order(order("r1"))).status == "FILLED"


# -- lookups and cancels -------------------------------------------------------------------------


async def test_cancel_a_resting_order_then_it_is_final() -> None:
    _, paper, clock = make()
    await paper.place_order(order("c", kind="limit", price="90"))
    clock.ms += 1_000
    state = await paper.cancel_order("BTCUSDT", "c")
    assert (state.status, state.executed_qty, state.is_final) == ("CANCELED", D(0), True)
    assert state.raw["transactTime"] == T0 + 1_000 and (await paper.open_orders()) == []
    with pytest.raises(UnknownOrder) as err:
        await paper.cancel_order("BTCUSDT", "c")
    assert err.value.code == -2011


async def test_cancel_of_a_filled_or_never_seen_order_is_unknown_order() -> None:
    _, paper, _ = make()
    await paper.place_order(order("done"))
    for cid in ("done", "never"):
        with pytest.raises(UnknownOrder):
            await paper.cancel_order("BTCUSDT", cid)


async def test_cancel_that_races_a_fill_loses_like_on_binance() -> None:
    feed, paper, _ = make()
    await paper.place_order(order("race", kind="limit", price="95"))
    feed.set("BTCUSDT", D(94))
    with pytest.raises(UnknownOrder):
        await paper.cancel_order("BTCUSDT", "race")
    state = await paper.get_order("BTCUSDT", "race")
    assert state is not None and state.status == "FILLED"


async def test_lookups_of_unknown_orders() -> None:
    _, paper, _ = make()
    assert await paper.get_order("BTCUSDT", "nobody") is None
    assert await paper.get_fills("BTCUSDT", "999") == []


async def test_raw_answer_is_binance_shaped_json() -> None:
    _, paper, _ = make(partial_fills=2)
    state = await paper.place_order(order("j"))
    raw = json.loads(json.dumps(state.raw))
    assert raw["status"] == "FILLED" and raw["side"] == "BUY" and raw["type"] == "MARKET"
    assert D(raw["executedQty"]) == D("0.5") and D(raw["cummulativeQuoteQty"]) == D(50)
    assert [f["tradeId"] for f in raw["fills"]] == [f.trade_id for f in state.fills]
    assert raw["paper"] is True


# -- determinism and wiring ----------------------------------------------------------------------


async def run_session(seed: int) -> list[object]:
    clock = ManualClock()
    feed = SyntheticPrices(seed=seed)
    config = PaperConfig(slippage_bps=D(5), partial_fills=2, fee_asset="BNB")
    paper = PaperExchange(feed, clock=clock, config=config)
    entry = await paper.place_order(order("e", qty="0.01"))
    target = (entry.cumulative_quote / entry.executed_qty * D("1.002")).quantize(D("0.01"))
    await paper.place_order(order("x", "sell", "limit", qty="0.01", price=str(target)))
    seen: list[object] = [entry, entry.raw]
    for _ in range(60):
        feed.step()
        clock.ms += 1_000
        seen += await paper.poll()
    final = await paper.get_order("BTCUSDT", "x")
    assert final is not None
    return [*seen, final, final.raw, await paper.get_fills("BTCUSDT", final.exchange_order_id)]


async def test_same_seed_same_prices_and_fills() -> None:
    first, again, other = await run_session(21), await run_session(21), await run_session(22)
    assert first == again
    assert first != other


OFFLINE = dataclasses.replace(
    Settings(), paper=dataclasses.replace(Settings().paper, symbols="snapshot")
)


async def test_from_settings_builds_a_clock_driven_synthetic_exchange() -> None:
    clock = ManualClock()
    paper = from_settings(OFFLINE, clock=clock)
    exchange: Exchange = paper  # the port, statically
    assert isinstance(paper.feed, SyntheticPrices)
    assert paper.config == PaperConfig(slippage_bps=D(5), spread_bps=D(2), bnb_discount=D("0.25"))
    state = await exchange.place_order(order("s", qty="0.001"))
    assert state.exchange_order_id == f"P{T0}-1" and state.fills[0].trade_id == f"P{T0}-1-1"
    clock.ms += 3_000
    await exchange.price("BTCUSDT")
    assert paper.feed.steps == 3


async def test_from_settings_with_binance_public_market_streams() -> None:
    settings_ = dataclasses.replace(
        OFFLINE, paper=dataclasses.replace(OFFLINE.paper, feed="binance")
    )
    paper = from_settings(settings_, clock=ManualClock())
    assert isinstance(paper.feed, BinanceMarketStream)
    await paper.aclose()


@pytest.mark.parametrize(
    "bad",
    [
        {"taker_fee": D(1)},
        {"maker_fee": D(-1)},
        {"slippage_bps": D(10_000)},
        {"fee_asset": "ETH"},
        {"partial_fills": 0},
        {"taker_fee": 0.001},
    ],
)
def test_bad_paper_config(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        PaperConfig(**bad)  # type: ignore[arg-type]  # bad values on purpose


async def test_the_orders_a_match_moved_are_taken_once_whichever_account_matched_them() -> None:
    """The reconcile pass drives what the paper matching moved between two listings
    (``take_moved``): a fill made while another order of the account was placed (its view
    of the exchange) is taken from the shared exchange, once; an order the price leaves
    alone is not."""
    feed, paper, _ = make()
    alice = paper.for_account("alice")
    await alice.place_order(order("near", "buy", "limit", price="95"))
    await alice.place_order(order("far", "buy", "limit", price="50"))
    assert paper.take_moved() == []
    feed.set("BTCUSDT", D("94"))
    await alice.place_order(order("m", "buy", "market"))  # matches alice's book first
    assert paper.take_moved() == ["near"]
    assert paper.take_moved() == []
    assert (await alice.get_order("BTCUSDT", "near")).status == "FILLED"  # type: ignore[union-attr]
