"""The real Binance client against the fake Binance server, over loopback HTTP."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import httpx
import pytest
import structlog

from worker.exchanges.base import (
    ClockSkew,
    CredentialsRejected,
    DuplicateOrder,
    ExchangeError,
    FilterViolation,
    OrderRejected,
    OrderRequest,
    OrderType,
    OutcomeUnknown,
    RateLimited,
    Side,
    UnknownOrder,
)
from worker.exchanges.binance import BinanceClient, BinancePublicPrices, RateLimitGate
from worker.testing.fake_binance import FakeBinance, Fault, FaultKind
from worker.testing.fake_binance.book import CommissionMode
from worker.testing.fake_binance.orders import ApiError

D = Decimal
KEY = "k3y-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
SECRET = "s3cr3t-abcdefghijklmnopqrstuvwxyz9876543210"
ORDER = "/api/v3/order"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ManualClock:
    """Wall-clock seconds that only move when a test says so (shared by client and fake)."""

    def __init__(self) -> None:
        self.now = 1_760_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake(clock: ManualClock) -> Iterator[FakeBinance]:
    with FakeBinance(api_key=KEY, api_secret=SECRET, clock=clock) as server:
        yield server


@pytest.fixture
async def client(fake: FakeBinance, clock: ManualClock) -> AsyncIterator[BinanceClient]:
    async with BinanceClient(KEY, SECRET, base_url=fake.base_url, clock=clock) as c:
        yield c


def market(
    cid: str, qty: str = "0.01", side: Side = "buy", symbol: str = "BTCUSDT"
) -> OrderRequest:
    return OrderRequest(symbol, side, "market", cid, quantity=D(qty))


def limit(cid: str, price: str, qty: str = "0.01", side: Side = "buy") -> OrderRequest:
    return OrderRequest("BTCUSDT", side, "limit", cid, quantity=D(qty), price=D(price))


def posts(fake: FakeBinance, cid: str) -> int:
    return sum(1 for r in fake.requests_to("POST", ORDER) if r.params["newClientOrderId"] == cid)


# -- signing and basics ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_signed_request_carries_key_timestamp_and_valid_signature(
    fake: FakeBinance, client: BinanceClient, clock: ManualClock
) -> None:
    await client.place_order(market("sig-1"))
    (post,) = fake.requests_to("POST", ORDER)
    assert post.status == 200 and post.api_key == KEY
    assert post.params["timestamp"] == str(round(clock() * 1000))
    assert post.params["recvWindow"] == "5000" and len(post.params["signature"]) == 64


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("key", "secret", "code"), [(KEY, "wrong-secret", -1022), ("wrong-key", SECRET, -2015)]
)
async def test_bad_credentials_are_rejected_by_the_server(
    fake: FakeBinance, clock: ManualClock, key: str, secret: str, code: int
) -> None:
    async with BinanceClient(key, secret, base_url=fake.base_url, clock=clock) as bad:
        with pytest.raises(CredentialsRejected) as err:  # the account's trouble, not an order's
            await bad.get_order("BTCUSDT", "any")
    assert err.value.code == code
    assert fake.orders() == []


@pytest.mark.anyio
async def test_market_order_returns_decimal_fills(fake: FakeBinance, client: BinanceClient) -> None:
    fake.set_partial_fills(3, price_step="0.5")
    fake.set_commission("0.001", "quote")
    state = await client.place_order(market("mkt-1", qty="0.03"))
    assert state.status == "FILLED" and state.is_final and state.client_order_id == "mkt-1"
    assert [(f.price, f.qty) for f in state.fills] == [
        (D("50000"), D("0.01")),
        (D("50000.5"), D("0.01")),
        (D("50001"), D("0.01")),
    ]
    assert state.executed_qty == sum(f.qty for f in state.fills) == D("0.03")
    assert state.cumulative_quote == D("1500.015")
    assert state.average_price == D("50000.5")
    assert all(f.commission_asset == "USDT" for f in state.fills)
    assert state.fills[0].commission == D("0.5")
    values = [v for f in state.fills for v in (f.price, f.qty, f.commission)]
    assert all(type(v) is Decimal for v in values)
    assert await client.get_fills("BTCUSDT", state.exchange_order_id) == list(state.fills)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("mode", "side", "asset", "commission"),
    [
        ("received", "buy", "BTC", "0.00001"),
        ("received", "sell", "USDT", "0.5"),
        ("base", "sell", "BTC", "0.00001"),
        ("BNB", "buy", "BNB", "0.001"),
    ],
)
async def test_commission_assets(
    fake: FakeBinance,
    client: BinanceClient,
    mode: CommissionMode,
    side: Side,
    asset: str,
    commission: str,
) -> None:
    fake.set_commission("0.001", mode)
    state = await client.place_order(market("fee-1", side=side))
    assert (state.fills[0].commission_asset, state.fills[0].commission) == (asset, D(commission))


@pytest.mark.anyio
async def test_quote_quantity_market_order(fake: FakeBinance, client: BinanceClient) -> None:
    req = OrderRequest("BTCUSDT", "buy", "market", "quote-1", quote_quantity=D("100"))
    state = await client.place_order(req)
    assert state.executed_qty == D("0.002") and state.cumulative_quote == D("100")
    assert fake.requests_to("POST", ORDER)[0].params["quoteOrderQty"] == "100"


@pytest.mark.anyio
async def test_thin_market_fills_partly_then_expires(
    fake: FakeBinance, client: BinanceClient
) -> None:
    fake.set_liquidity("BTCUSDT", "0.004")
    state = await client.place_order(market("thin-1", qty="0.01"))
    assert state.status == "EXPIRED" and state.executed_qty == D("0.004")


@pytest.mark.anyio
async def test_limit_order_rests_then_fills_when_price_crosses(
    fake: FakeBinance, client: BinanceClient
) -> None:
    state = await client.place_order(limit("lim-1", "49000"))
    assert state.status == "NEW" and state.is_open and state.fills == ()
    fake.set_price("BTCUSDT", "49500")
    pending = await client.get_order("BTCUSDT", "lim-1")
    assert pending is not None and pending.status == "NEW"
    fake.set_price("BTCUSDT", "48900")
    filled = await client.get_order("BTCUSDT", "lim-1")
    assert filled is not None and filled.status == "FILLED"
    assert filled.executed_qty == D("0.01") and filled.cumulative_quote == D("490")
    (fill,) = await client.get_fills("BTCUSDT", filled.exchange_order_id)
    assert fill.price == D("49000") and fill.qty == D("0.01")


@pytest.mark.anyio
async def test_limit_order_partly_filled_then_cancelled(
    fake: FakeBinance, client: BinanceClient
) -> None:
    fake.set_liquidity("BTCUSDT", "0.004")
    await client.place_order(limit("part-1", "49000"))
    fake.set_price("BTCUSDT", "48000")
    cancelled = await client.cancel_order("BTCUSDT", "part-1")
    assert cancelled.client_order_id == "part-1" and cancelled.status == "CANCELED"
    assert cancelled.executed_qty == D("0.004")
    with pytest.raises(UnknownOrder) as err:
        await client.cancel_order("BTCUSDT", "part-1")
    assert err.value.code == -2011


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kind", "stop", "move_to", "fill_price"),
    [("stop_loss", "45000", "44000", "44000"), ("take_profit", "60000", "61000", "61000")],
)
async def test_stop_orders_fire_when_price_moves(
    fake: FakeBinance,
    client: BinanceClient,
    kind: OrderType,
    stop: str,
    move_to: str,
    fill_price: str,
) -> None:
    req = OrderRequest("BTCUSDT", "sell", kind, "exit-1", quantity=D("0.01"), stop_price=D(stop))
    assert (await client.place_order(req)).status == "NEW"
    fake.set_price("BTCUSDT", move_to)
    state = await client.get_order("BTCUSDT", "exit-1")
    assert state is not None and state.status == "FILLED"
    assert state.cumulative_quote == D(fill_price) * D("0.01")
    assert fake.requests_to("POST", ORDER)[0].params["type"] == kind.upper()


@pytest.mark.anyio
async def test_stop_limit_order_triggers_then_fills_at_its_limit(
    fake: FakeBinance, client: BinanceClient
) -> None:
    req = OrderRequest(
        "BTCUSDT", "sell", "stop_loss", "sll-1", D("0.01"), price=D("44900"), stop_price=D("45000")
    )
    await client.place_order(req)
    assert fake.requests_to("POST", ORDER)[0].params["type"] == "STOP_LOSS_LIMIT"
    fake.set_price("BTCUSDT", "45500")
    resting = await client.get_order("BTCUSDT", "sll-1")
    assert resting is not None and resting.status == "NEW"
    fake.set_price("BTCUSDT", "44950")
    state = await client.get_order("BTCUSDT", "sll-1")
    assert state is not None and state.status == "FILLED" and state.average_price == D("44900")


@pytest.mark.anyio
@pytest.mark.parametrize(("fills", "pages"), [(7, 3), (6, 3), (2, 1)])
async def test_get_fills_pages_through_every_trade_of_the_order(
    fake: FakeBinance, clock: ManualClock, fills: int, pages: int
) -> None:
    """orderId + fromId, the next page from the last id + 1, until a page is short (an
    exact multiple of the page size costs one empty page)."""
    fake.set_partial_fills(fills, price_step="0.5")
    async with BinanceClient(
        KEY, SECRET, base_url=fake.base_url, clock=clock, trades_page_size=3
    ) as paged:
        state = await paged.place_order(market("many-1", qty=f"0.0{fills}"))
        await paged.place_order(market("other-1", qty="0.02"))  # trades of another order
        listed = await paged.get_fills("BTCUSDT", state.exchange_order_id)
    assert listed == list(state.fills)
    assert len({f.trade_id for f in listed}) == fills
    assert sum(f.qty for f in listed) == state.executed_qty == D(f"0.0{fills}")
    calls = fake.requests_to("GET", "/api/v3/myTrades")
    assert len(calls) == pages
    assert all(c.params["orderId"] == state.exchange_order_id for c in calls)
    assert all(c.params["limit"] == "3" for c in calls)
    first = int(state.fills[0].trade_id)
    assert [c.params["fromId"] for c in calls] == [
        "0",
        *(str(first + 3 * i) for i in range(1, pages)),
    ]


@pytest.mark.anyio
async def test_get_fills_of_more_than_1000_trades_at_binance_page_size(
    fake: FakeBinance, client: BinanceClient
) -> None:
    """Without fromId Binance answers the *most recent* 1000: the oldest fill would be lost."""
    fake.set_partial_fills(1001)
    state = await client.place_order(market("big-1", qty="0.01001"))
    listed = await client.get_fills("BTCUSDT", state.exchange_order_id)
    assert [f.trade_id for f in listed] == [f.trade_id for f in state.fills]
    assert len(listed) == 1001 and sum(f.qty for f in listed) == D("0.01001")
    calls = fake.requests_to("GET", "/api/v3/myTrades")
    assert [(c.params["fromId"], c.params["limit"]) for c in calls] == [
        ("0", "1000"),
        (str(int(state.fills[1000].trade_id)), "1000"),
    ]


def test_fake_my_trades_pages_like_binance(fake: FakeBinance) -> None:
    """Without fromId the *most recent* trades (oldest first), the default limit is 500,
    a larger limit than 1000 is served as 1000, a limit below 1 is refused."""
    fake.set_partial_fills(1001)
    fake.set_commission("0", "quote")
    order, trades = fake.book.place(  # the matching engine alone: no HTTP needed
        {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01001"}
    )
    ids = [t.id for t in trades]
    assert len(ids) == 1001 and ids == sorted(ids)

    def page(**params: str) -> list[int]:
        p = {"symbol": "BTCUSDT", "orderId": str(order.order_id), **params}
        return [t["id"] for t in fake.book.my_trades(p)]

    assert page() == ids[-500:]
    assert page(limit="2") == ids[-2:]
    assert page(limit="5000") == ids[-1000:]
    assert page(fromId="0", limit="3") == ids[:3]
    assert page(fromId=str(ids[3]), limit="2") == ids[3:5]
    assert page(fromId=str(ids[-1] + 1)) == []
    with pytest.raises(ApiError) as err:
        page(limit="0")
    assert err.value.code == -1130


@pytest.mark.anyio
async def test_trades_can_lag_the_order(fake: FakeBinance, client: BinanceClient) -> None:
    fake.set_trades_lag(2)
    state = await client.place_order(market("lag-1", qty="0.02"))
    assert state.status == "FILLED" and len(state.fills) == 1
    assert await client.get_fills("BTCUSDT", state.exchange_order_id) == []
    assert await client.get_fills("BTCUSDT", state.exchange_order_id) == []
    assert await client.get_fills("BTCUSDT", state.exchange_order_id) == list(state.fills)


def test_trades_page_size_is_binance_range() -> None:
    for bad in (0, 1001):
        with pytest.raises(ValueError, match="trades_page_size"):
            BinanceClient("k", "s", trades_page_size=bad)


@pytest.mark.anyio
@pytest.mark.parametrize("after", ["0.004", "0"])
async def test_self_trade_prevention_expires_in_match(
    fake: FakeBinance, client: BinanceClient, after: str
) -> None:
    fake.expire_in_match("BTCUSDT", after=after)
    state = await client.place_order(market("stp-1", qty="0.01"))
    assert state.status == "EXPIRED_IN_MATCH" and state.is_final
    assert state.executed_qty == sum(f.qty for f in state.fills) == D(after)
    again = await client.place_order(market("stp-2", qty="0.01"))  # armed once only
    assert again.status == "FILLED"


@pytest.mark.anyio
async def test_cancel_race_can_target_one_order(fake: FakeBinance, client: BinanceClient) -> None:
    stop = OrderRequest("BTCUSDT", "sell", "stop_loss", "sl-9", D("0.01"), stop_price=D("45000"))
    take = OrderRequest("BTCUSDT", "sell", "take_profit", "tp-9", D("0.01"), stop_price=D("60000"))
    await client.place_order(stop)
    await client.place_order(take)
    fake.faults.push(Fault.cancel_race("tp-9"))
    assert (await client.cancel_order("BTCUSDT", "sl-9")).status == "CANCELED"
    with pytest.raises(UnknownOrder):
        await client.cancel_order("BTCUSDT", "tp-9")
    state = await client.get_order("BTCUSDT", "tp-9")
    assert state is not None and state.status == "FILLED"
    assert state.average_price == D("60000")  # a stop touched this instant fills at its stop
    assert len(fake.faults) == 0


@pytest.mark.anyio
async def test_balances_are_enforced_and_moved(fake: FakeBinance, client: BinanceClient) -> None:
    fake.set_balances({"USDT": "1000", "BTC": "0"})
    fake.set_commission("0.001", "quote")
    with pytest.raises(OrderRejected) as err:
        await client.place_order(market("bal-1", qty="0.03"))  # 1500 USDT
    assert err.value.code == -2010 and "insufficient balance" in err.value.msg
    await client.place_order(market("bal-2", qty="0.01"))
    with pytest.raises(OrderRejected):
        await client.place_order(market("bal-3", qty="0.02", side="sell"))
    assert fake.book.balances == {"USDT": D("499.5"), "BTC": D("0.01")}


@pytest.mark.anyio
async def test_stop_that_would_trigger_immediately_is_rejected(client: BinanceClient) -> None:
    req = OrderRequest(
        "BTCUSDT", "sell", "stop_loss", "sl-1", quantity=D("0.01"), stop_price=D("51000")
    )
    with pytest.raises(OrderRejected) as err:
        await client.place_order(req)
    assert err.value.code == -2010 and "trigger immediately" in err.value.msg


@pytest.mark.anyio
async def test_unknown_symbol_is_rejected(client: BinanceClient) -> None:
    with pytest.raises(OrderRejected) as err:
        await client.place_order(market("x-1", symbol="DOGEUSDT"))
    assert err.value.code == -1121


@pytest.mark.anyio
async def test_public_prices_feed(fake: FakeBinance) -> None:
    fake.set_price("ETHUSDT", "3210.5")
    async with BinancePublicPrices(base_url=fake.base_url) as feed:
        assert await feed.price("ETHUSDT") == D("3210.5")
    assert "k3y" not in repr(feed)


# -- filters applied before sending ------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("req", "reason"),
    [
        (market("f-1", qty="0.000009"), "below minQty 0.00001 (requested 0.000009"),
        (market("f-2", qty="0.00009"), "below minNotional 5"),
        (market("f-3", qty="0"), "quantity must be positive"),
        (limit("f-4", "100", qty="0.01"), "notional 1 (0.01 x 100) below minNotional 5"),
        (OrderRequest("BTCUSDT", "buy", "market", "f-5", quote_quantity=D("4")), "quote quantity"),
        (limit("f-6", "0.001"), "price must be positive"),
    ],
)
async def test_filter_violations_fail_locally(
    fake: FakeBinance, client: BinanceClient, req: OrderRequest, reason: str
) -> None:
    with pytest.raises(FilterViolation) as err:
        await client.place_order(req)
    assert reason in str(err.value)
    assert fake.requests_to("POST", ORDER) == []


@pytest.mark.anyio
async def test_quantity_and_price_are_rounded_before_sending(
    fake: FakeBinance, client: BinanceClient
) -> None:
    await client.place_order(limit("rnd-1", "49000.004", qty="0.0123456789"))
    (post,) = fake.requests_to("POST", ORDER)
    assert (post.params["quantity"], post.params["price"]) == ("0.01234", "49000.00")
    assert post.params["timeInForce"] == "GTC" and post.params["newOrderRespType"] == "FULL"


# -- faults ------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "error", "code", "orders"),
    [
        (Fault.drop_after_apply(), OutcomeUnknown, None, 1),
        (Fault.drop_before_apply(), OutcomeUnknown, None, 0),
        (Fault.server_error(status=503), OutcomeUnknown, None, 0),
        (Fault.server_error(status=502), OutcomeUnknown, None, 0),
        (Fault.server_error(after_apply=True), OutcomeUnknown, None, 1),
        (Fault.timeout_after_apply(), OutcomeUnknown, -1007, 1),
        (Fault.insufficient_balance(), OrderRejected, -2010, 0),
        (Fault.filter_failure("Filter failure: LOT_SIZE"), OrderRejected, -1013, 0),
    ],
    ids=lambda v: v.kind.value if isinstance(v, Fault) else None,
)
async def test_faults_are_classified(
    fake: FakeBinance,
    client: BinanceClient,
    fault: Fault,
    error: type[ExchangeError],
    code: int | None,
    orders: int,
) -> None:
    await client.symbol_rules("BTCUSDT")
    fake.faults.push(fault)
    with pytest.raises(error) as err:
        await client.place_order(market("flt-1"))
    assert type(err.value) is error and getattr(err.value, "code", None) == code
    assert fake.order_count("flt-1") == orders
    assert len(fake.faults) == 0


@pytest.mark.anyio
async def test_client_timeout_is_outcome_unknown(fake: FakeBinance, clock: ManualClock) -> None:
    fake.faults.push(Fault.hang())
    async with BinanceClient(
        KEY, SECRET, base_url=fake.base_url, clock=clock, timeout_s=0.2
    ) as impatient:
        with pytest.raises(OutcomeUnknown, match="ReadTimeout"):
            await impatient.place_order(market("slow-1"))
        fake.release_hung()
        state = await impatient.get_order("BTCUSDT", "slow-1")
    assert state is not None and state.status == "FILLED"


@pytest.mark.anyio
async def test_reconcile_after_dropped_connection_finds_the_filled_order(
    fake: FakeBinance, client: BinanceClient
) -> None:
    fake.faults.push(Fault.drop_after_apply())
    with pytest.raises(OutcomeUnknown):
        await client.place_order(market("rec-1", qty="0.02"))
    state = await client.get_order("BTCUSDT", "rec-1")
    assert state is not None and state.status == "FILLED" and state.executed_qty == D("0.02")
    fills = await client.get_fills("BTCUSDT", state.exchange_order_id)
    assert sum(f.qty for f in fills) == D("0.02")
    assert posts(fake, "rec-1") == 1 and fake.order_count("rec-1") == 1


@pytest.mark.anyio
async def test_order_visible_only_after_a_few_lookups(
    fake: FakeBinance, client: BinanceClient
) -> None:
    fake.faults.push(Fault.drop_after_apply(lookups=2))
    with pytest.raises(OutcomeUnknown):
        await client.place_order(market("late-1"))
    assert await client.get_order("BTCUSDT", "late-1") is None
    assert await client.get_order("BTCUSDT", "late-1") is None
    state = await client.get_order("BTCUSDT", "late-1")
    assert state is not None and state.status == "FILLED"
    lookups = fake.requests_to("GET", ORDER)
    assert [r.status for r in lookups] == [400, 400, 200]


@pytest.mark.anyio
async def test_get_order_of_unknown_id_is_none(client: BinanceClient) -> None:
    assert await client.get_order("BTCUSDT", "never-sent") is None


@pytest.mark.anyio
async def test_cancel_that_raced_a_fill(fake: FakeBinance, client: BinanceClient) -> None:
    await client.place_order(limit("race-1", "49000"))
    fake.faults.push(Fault.cancel_race())
    with pytest.raises(UnknownOrder) as err:
        await client.cancel_order("BTCUSDT", "race-1")
    assert err.value.code == -2011
    state = await client.get_order("BTCUSDT", "race-1")
    assert state is not None and state.status == "FILLED" and state.executed_qty == D("0.01")
    assert fake.requests_to("DELETE", ORDER)[0].fault is FaultKind.CANCEL_RACE


@pytest.mark.anyio
async def test_duplicate_client_id_rule(fake: FakeBinance, client: BinanceClient) -> None:
    await client.place_order(limit("dup-1", "49000"))
    with pytest.raises(DuplicateOrder) as err:  # an open order holds the id
        await client.place_order(limit("dup-1", "49000"))
    assert isinstance(err.value, OutcomeUnknown) and err.value.code == -2010
    assert fake.order_count("dup-1") == 1
    fake.set_price("BTCUSDT", "48000")  # fills: the id is free again on Binance
    second = await client.place_order(market("dup-1"))
    assert second.status == "FILLED" and fake.order_count("dup-1") == 2
    latest = await client.get_order("BTCUSDT", "dup-1")
    assert latest is not None and latest.exchange_order_id == second.exchange_order_id


# -- rate limits and bans ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_429_blocks_every_request_until_retry_after(
    fake: FakeBinance, client: BinanceClient, clock: ManualClock
) -> None:
    fake.faults.push(Fault.rate_limited(retry_after=3))
    with pytest.raises(RateLimited) as err:
        await client.price("BTCUSDT")
    assert (err.value.retry_after_s, err.value.banned) == (3, False)
    sent = len(fake.requests)
    clock.advance(2.5)
    for call in (client.price("ETHUSDT"), client.get_order("BTCUSDT", "x"),
                 client.place_order(market("rl-1"))):  # fmt: skip
        with pytest.raises(RateLimited) as err:
            await call
        assert err.value.retry_after_s == pytest.approx(0.5)
    assert len(fake.requests) == sent  # the ban never touched the network
    clock.advance(0.5)
    assert await client.price("BTCUSDT") == D("50000")


@pytest.mark.anyio
async def test_418_ban_is_shared_by_clients_on_one_gate(
    fake: FakeBinance, clock: ManualClock
) -> None:
    gate = RateLimitGate(clock)
    fake.faults.push(Fault.banned(retry_after=120))
    async with (
        BinanceClient(KEY, SECRET, base_url=fake.base_url, clock=clock, gate=gate) as trading,
        BinancePublicPrices(base_url=fake.base_url, gate=gate) as prices,
    ):
        with pytest.raises(RateLimited) as err:
            await trading.price("BTCUSDT")
        assert err.value.banned and err.value.retry_after_s == 120
        with pytest.raises(RateLimited):
            await prices.price("BTCUSDT")
        assert len(fake.requests) == 1
        clock.advance(120)
        assert await prices.price("BTCUSDT") == D("50000")


@pytest.mark.anyio
async def test_ignoring_a_429_earns_a_418_ban(fake: FakeBinance, clock: ManualClock) -> None:
    fake.faults.push(Fault.rate_limited(retry_after=5))
    async with (
        BinanceClient(KEY, SECRET, base_url=fake.base_url, clock=clock) as first,
        BinanceClient(KEY, SECRET, base_url=fake.base_url, clock=clock) as careless,
    ):
        with pytest.raises(RateLimited):
            await first.price("BTCUSDT")
        with pytest.raises(RateLimited) as err:  # own gate: it does not know about the 429
            await careless.price("BTCUSDT")
    assert err.value.banned and err.value.retry_after_s == fake.ban_after_limit_s + 1
    assert [r.status for r in fake.requests] == [429, 418]


# -- clock ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_clock_skew_fault_resyncs_and_retries_once(
    fake: FakeBinance, client: BinanceClient
) -> None:
    await client.symbol_rules("BTCUSDT")
    await client.price("BTCUSDT")
    fake.faults.push(Fault.clock_skew())
    state = await client.place_order(market("skew-1"))
    assert state.status == "FILLED" and fake.order_count("skew-1") == 1
    trail = [(r.method, r.path, r.status) for r in fake.requests[2:]]
    assert trail == [
        ("GET", "/api/v3/ticker/price", 200),
        ("GET", "/api/v3/time", 200),
        ("POST", ORDER, 400),
        ("GET", "/api/v3/time", 200),
        ("POST", ORDER, 200),
    ]


@pytest.mark.anyio
async def test_real_clock_drift_is_corrected_by_resync(
    fake: FakeBinance, client: BinanceClient
) -> None:
    assert await client.get_order("BTCUSDT", "nothing") is None  # first sync: offset 0
    fake.time_offset_ms = 90_000  # the server's clock jumps 90 s ahead of ours
    assert await client.get_order("BTCUSDT", "nothing") is None
    statuses = [r.status for r in fake.requests_to("GET", ORDER)]
    assert statuses == [400, 400, 400]  # -2013, -1021 (stale offset), -2013 after resync
    assert len(fake.requests_to("GET", "/api/v3/time")) == 2


@pytest.mark.anyio
async def test_persistent_clock_skew_escapes_as_clock_skew(
    fake: FakeBinance, client: BinanceClient
) -> None:
    await client.symbol_rules("BTCUSDT")
    await client.sync_time()
    fake.faults.push(Fault.clock_skew(), Fault.clock_skew())
    with pytest.raises(ClockSkew):
        await client.place_order(limit("skew-2", "49000"))
    assert fake.order_count("skew-2") == 0


def test_fake_serves_sync_callers_and_stops_cleanly() -> None:
    fake = FakeBinance().start()
    url = fake.base_url
    try:
        with httpx.Client() as http:
            assert http.get(f"{url}/api/v3/ticker/price?symbol=ETHUSDT").json() == {
                "symbol": "ETHUSDT",
                "price": "3000.00000000",
            }
            unsigned = http.get(f"{url}/api/v3/order?symbol=BTCUSDT&origClientOrderId=a")
            assert unsigned.status_code == 401 and unsigned.json()["code"] == -2014
    finally:
        fake.stop()
    with pytest.raises(httpx.ConnectError), httpx.Client() as http:
        http.get(f"{url}/api/v3/time")


@pytest.mark.anyio
async def test_each_hang_fault_holds_its_own_request(fake: FakeBinance, clock: ManualClock) -> None:
    async with BinanceClient(
        KEY, SECRET, base_url=fake.base_url, clock=clock, timeout_s=0.1
    ) as impatient:
        for cid in ("hang-1", "hang-2"):
            fake.faults.push(Fault.hang())
            with pytest.raises(OutcomeUnknown):
                await impatient.place_order(market(cid))
            fake.release_hung()
    assert fake.order_count("hang-1") == fake.order_count("hang-2") == 1


@pytest.mark.anyio
async def test_unreadable_success_answer_is_outcome_unknown(clock: ManualClock) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v3/time":
            return httpx.Response(200, json={"serverTime": round(clock() * 1000)})
        return httpx.Response(200, json=[{"id": 1, "price": "1"}])

    transport = httpx.MockTransport(answer)
    async with BinanceClient(KEY, SECRET, clock=clock, transport=transport) as odd:
        with pytest.raises(OutcomeUnknown, match="unreadable answer"):
            await odd.get_fills("BTCUSDT", "1")


def test_recv_window_is_capped() -> None:
    with pytest.raises(ValueError, match="recv_window_ms"):
        BinanceClient(KEY, SECRET, recv_window_ms=60_001)


# -- secrets -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_secrets_never_in_repr_logs_or_errors(
    fake: FakeBinance, client: BinanceClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []
    with structlog.testing.capture_logs() as events:
        await client.place_order(market("sec-1"))
        for fault in (Fault.drop_after_apply(), Fault.server_error(), Fault.clock_skew()):
            fake.faults.push(fault)
            try:
                await client.place_order(market("sec-2"))
            except ExchangeError as exc:
                errors.append(f"{exc!s} {exc!r} {exc.__cause__!r}")
        fake.faults.push(Fault.rate_limited(retry_after=1))
        with pytest.raises(RateLimited) as err:
            await client.price("BTCUSDT")
        errors.append(repr(err.value))
    assert events, "the client logs what happens"
    text = "\n".join([repr(client), vars(client).__repr__(), caplog.text, repr(events), *errors])
    assert KEY not in text and SECRET not in text
    assert "key=***" in repr(client)
