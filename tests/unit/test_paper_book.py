"""worker/exchanges/paper_book.py: fills as an exchange makes them, on real symbols' rules.

Pure: a quote (bid/ask/size) and an order in, executions out. Every execution is checked to
sit on the symbol's tick and step grids.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from worker.exchanges.base import OrderRequest, OrderType, Side
from worker.exchanges.filters import SymbolRules
from worker.exchanges.paper_book import (
    MAX_BOOK_LEVELS,
    Execution,
    PaperConfig,
    PaperOrder,
    Quote,
    commission,
    match,
    moved_by,
    new_order,
    walk,
)
from worker.exchanges.symbols import reference_price, snapshot

D = Decimal
BTC = snapshot().get("BTCUSDT")  # tick 0.01, step 0.00001, minNotional 5
DOGE = snapshot().get("DOGEUSDT")  # tick 0.00001, step 1, minNotional 1
BOOK = Quote(bid=D("99.99"), ask=D("100.01"), last=D("100"))


def placed(
    side: Side = "buy",
    kind: OrderType = "market",
    qty: str = "1",
    *,
    rules: SymbolRules = BTC,
    quote: Quote = BOOK,
    price: str | None = None,
    stop: str | None = None,
    config: PaperConfig | None = None,
) -> PaperOrder:
    req = OrderRequest(
        rules.symbol, side, kind, "c", quantity=D(qty),
        price=D(price) if price else None, stop_price=D(stop) if stop else None,
    )  # fmt: skip
    return new_order(rules, req, quote, config or PaperConfig(), exchange_order_id="1", now_ms=0)


def on_grid(rules: SymbolRules, executions: list[Execution]) -> bool:
    return all(
        e.price % rules.tick_size == 0 and e.quantity % rules.step_size == 0 for e in executions
    )


def test_market_buy_takes_the_ask_and_a_sell_the_bid() -> None:
    for side, price in (("buy", D("100.01")), ("sell", D("99.99"))):
        order = placed(side)  # type: ignore[arg-type]
        executions, expires = match(order, BTC, BOOK, PaperConfig(), placing=True)
        assert executions == [Execution(price, D(1), maker=False)] and expires


def test_slippage_is_beyond_the_touch_and_on_the_tick() -> None:
    config = PaperConfig(slippage_bps=D(10))
    buy, _ = match(placed("buy"), BTC, BOOK, config, placing=True)
    sell, _ = match(placed("sell"), BTC, BOOK, config, placing=True)
    assert buy[0].price == D("100.12")  # 100.01 * 1.001 = 100.11001, up to the tick
    assert sell[0].price == D("99.89")  # 99.99 * 0.999 = 99.89001, down to the tick


def test_a_synthetic_book_around_a_mid_is_spread_bps_wide_on_the_tick() -> None:
    quote = Quote.around(BTC, D("50000"), D(2))
    assert (quote.bid, quote.ask, quote.last) == (D("49995.00"), D("50005.00"), D("50000"))
    tight = Quote.around(DOGE, D("0.10000"), D("0.5"))  # 0.5 bps of 0.1 is under a tick
    assert (tight.bid, tight.ask) == (D("0.09999"), D("0.10001"))
    assert Quote.around(BTC, D("100"), D(0)) == Quote(D("100"), D("100"), D("100"))


def test_a_market_order_larger_than_the_touch_walks_the_book() -> None:
    quote = Quote(D("99.99"), D("100.01"), D("100"), bid_qty=D("0.3"), ask_qty=D("0.4"))
    order = placed("buy", qty="1", quote=quote)
    executions, _ = match(order, BTC, quote, PaperConfig(spread_bps=D(2)), placing=True)
    # levels one gap (2 bps of 100.01 = 0.020002, up to 0.03) apart, 0.4 each
    assert executions == [
        Execution(D("100.01"), D("0.4"), maker=False),
        Execution(D("100.04"), D("0.4"), maker=False),
        Execution(D("100.07"), D("0.2"), maker=False),
    ]


def test_configured_depth_when_the_feed_shows_no_size_and_the_rest_expires() -> None:
    config = PaperConfig(depth_quote=D("10"))  # 10 USDT a level: 0.09999 BTC at 100.01
    executions, expires = match(placed("buy", qty="100"), BTC, BOOK, config, placing=True)
    assert len(executions) == MAX_BOOK_LEVELS and expires
    assert {e.quantity for e in executions} == {D("0.09999")}
    assert [e.price for e in executions[:3]] == [D("100.01"), D("100.02"), D("100.03")]
    assert on_grid(BTC, executions)


def test_limit_rests_until_the_touch_crosses_then_fills_at_its_limit_as_maker() -> None:
    order = placed("buy", "limit", price="99.50")
    assert match(order, BTC, BOOK, PaperConfig(), placing=True) == ([], False)
    above = Quote(D("99.50"), D("99.51"), D("99.50"))  # the ask is still above the limit
    assert match(order, BTC, above, PaperConfig(), placing=False) == ([], False)
    crossed = Quote(D("99.40"), D("99.45"), D("99.42"))
    executions, expires = match(order, BTC, crossed, PaperConfig(), placing=False)
    assert executions == [Execution(D("99.50"), D(1), maker=True)] and not expires


def test_limit_that_crosses_on_arrival_takes_the_book_but_never_beyond_its_limit() -> None:
    quote = Quote(D("99.99"), D("100.01"), D("100"), ask_qty=D("0.5"))
    order = placed("buy", "limit", price="100.02", quote=quote)
    executions, expires = match(order, BTC, quote, PaperConfig(), placing=True)
    two_levels = [
        Execution(D("100.01"), D("0.5"), maker=False),
        Execution(D("100.02"), D("0.5"), maker=False),
    ]
    assert executions == two_levels and not expires
    wide = PaperConfig(spread_bps=D(1))  # levels 0.02 apart: the second is beyond 100.02
    order = placed("buy", "limit", price="100.02", quote=quote)
    executions, expires = match(order, BTC, quote, wide, placing=True)
    assert executions == [Execution(D("100.01"), D("0.5"), maker=False)] and not expires


def test_a_stop_triggers_on_the_last_price_and_fills_as_a_market_order() -> None:
    order = placed("sell", "stop_loss", stop="95")
    above = Quote(D("94.90"), D("95.10"), D("95.01"))  # the bid is below, the last is not
    assert match(order, BTC, above, PaperConfig(), placing=False) == ([], False)
    fallen = Quote(D("94.80"), D("94.90"), D("94.85"))
    executions, expires = match(order, BTC, fallen, PaperConfig(), placing=False)
    assert executions == [Execution(D("94.80"), D(1), maker=False)] and expires


def test_bnb_discount_applies_to_fees_paid_in_bnb_only() -> None:
    bnb = PaperConfig(fee_asset="BNB", bnb_discount=D("0.25"))
    fee = commission(bnb, BTC, "buy", D(100), D(1), maker=False, bnb_price=D(500))
    assert fee == (D("0.00015000"), "BNB")  # 0.1 USDT at 500 = 0.0002 BNB, 25 % off
    quote = PaperConfig(fee_asset="quote", bnb_discount=D("0.25"))
    assert commission(quote, BTC, "buy", D(100), D(1), maker=False, bnb_price=None) == (
        D("0.10000000"),
        "USDT",
    )


def test_fee_tiers_charge_maker_and_taker_apart() -> None:
    tier = PaperConfig(maker_fee=D("0.0009"), taker_fee=D("0.001"))
    maker = commission(tier, BTC, "sell", D(100), D(1), maker=True, bnb_price=None)
    taker = commission(tier, BTC, "sell", D(100), D(1), maker=False, bnb_price=None)
    assert (maker[0], taker[0]) == (D("0.09000000"), D("0.10000000"))


@pytest.mark.parametrize("bad", [{"spread_bps": D(10_000)}, {"depth_quote": D(-1)}])
def test_bad_book_config(bad: dict[str, Decimal]) -> None:
    with pytest.raises(ValueError):
        PaperConfig(**bad)  # type: ignore[arg-type]


SYMBOLS = sorted(snapshot().rules)


@settings(max_examples=200, deadline=None)
@given(
    symbol=st.sampled_from(SYMBOLS),
    side=st.sampled_from(["buy", "sell"]),
    notional=st.integers(1, 40),
    spread=st.integers(0, 50),
    depth=st.integers(0, 3),
)
def test_every_fill_on_any_symbol_is_on_its_tick_and_step(
    symbol: str, side: Side, notional: int, spread: int, depth: int
) -> None:
    rules = snapshot().get(symbol)
    mid = reference_price(rules)
    config = PaperConfig(
        spread_bps=D(spread), slippage_bps=D(5), depth_quote=rules.min_notional * depth
    )
    quote = Quote.around(rules, mid, config.spread_bps)
    quantity = max(rules.min_qty, rules.step_size * 10 * notional)
    executions = walk(rules, side, quote, quantity, config)
    assert executions and on_grid(rules, executions)
    assert sum(e.quantity for e in executions) <= quantity


@settings(max_examples=400)
@given(
    side=st.sampled_from(["buy", "sell"]),
    kind=st.sampled_from(["limit", "stop_loss", "take_profit"]),
    price=st.one_of(st.none(), st.integers(9_000, 11_000)),
    stop=st.one_of(st.none(), st.integers(9_000, 11_000)),
    triggered=st.booleans(),
    bid=st.integers(9_000, 11_000),
    spread=st.integers(0, 100),
    last=st.integers(-100, 100),
)
def test_an_order_the_quote_does_not_move_is_left_as_it_is_by_match(
    side: Side,
    kind: OrderType,
    price: int | None,
    stop: int | None,
    triggered: bool,
    bid: int,
    spread: int,
    last: int,
) -> None:
    """A matching pass claims only the orders ``moved_by`` picks (worker/db/paper.sql holds
    the same test): every order it leaves out is one that ``match`` leaves unchanged, and
    every order it picks is one that ``match`` fills or fires. Prices in cents, on BTC's
    tick."""
    cents = D("0.01")
    try:
        req = OrderRequest("BTCUSDT", side, kind, "c", quantity=D("0.5"),
                           price=D(price) * cents if price is not None else None,
                           stop_price=D(stop) * cents if stop is not None else None)  # fmt: skip
    except ValueError:  # a limit without a price, a stop without a stop price
        assume(False)
    order = PaperOrder(req, "1", D("0.5"), req.price, req.stop_price, 0, triggered=triggered)
    quote = Quote(bid=D(bid) * cents, ask=D(bid + spread) * cents, last=D(bid + last) * cents)
    before = PaperOrder(req, "1", D("0.5"), req.price, req.stop_price, 0, triggered=triggered)
    executions, expires = match(order, BTC, quote, PaperConfig(), placing=False)
    changed = bool(executions) or expires or order.triggered != before.triggered
    assert moved_by(before, quote) is changed
