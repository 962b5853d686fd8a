"""Request weight against the fake Binance: the REST safety net lists each account's open
orders (``GET /api/v3/openOrders``, weight 6 per symbol) instead of looking up every order
in flight (``GET /api/v3/order``, weight 4 each), and the weight budget defers lookups
before a 429 while exits still go through."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.execution_support import (
    KEY,
    SECRET,
    call_off_loop,
    exec_settings,
    live_worker,
    new_position,
    wait_status,
)
from tests.execution_support import position as position_row
from tests.pipeline_support import eventually
from worker.exchanges.base import OrderRequest
from worker.exchanges.binance import BinanceClient
from worker.exchanges.binance_http import BudgetExhausted
from worker.exchanges.budget import urgent
from worker.testing.fake_binance import FakeBinance

pytestmark = pytest.mark.anyio
D = Decimal
ORDER, OPEN_ORDERS = "/api/v3/order", "/api/v3/openOrders"


async def test_protected_positions_at_rest_cost_one_listing_per_pass(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    pids = [
        new_position(db_url, quantity=D("0.5"), is_paper_trade=False,
                     stop_loss_price=D("90"), take_profit_price=D("130"))[1]
        for _ in range(3)
    ]  # fmt: skip
    async with live_worker(exec_settings(db_url, redis_url), fake) as app:
        await eventually(
            lambda: all(position_row(db_url, p)["protection"] == "exchange" for p in pids), 20
        )
        assert app.watcher is not None
        start, lookups = app.watcher.passes, len(fake.requests_to("GET", ORDER))
        listings = len(fake.requests_to("GET", OPEN_ORDERS))
        await eventually(lambda: app.watcher is not None and app.watcher.passes > start + 5, 10)
        passes = app.watcher.passes - start
        assert len(fake.requests_to("GET", ORDER)) == lookups  # six legs open: none looked up
        new_listings = fake.requests_to("GET", OPEN_ORDERS)[listings:]
        assert passes - 1 <= len(new_listings) <= passes + 1
        assert {r.params.get("symbol") for r in new_listings} == {"BTCUSDT"}


async def test_between_listings_a_pass_reads_only_the_orders_still_to_send(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    """Six protection legs rest at the exchange; the account is listed every second and a
    pass runs every 0.2 s. Only the listing passes read the resting orders from the
    database (a pass costs what changed, not what rests), and a leg that fills between
    listings, with the user data stream off, is still recorded by the next listing."""
    pids = [
        new_position(db_url, quantity=D("0.5"), is_paper_trade=False,
                     stop_loss_price=D("90"), take_profit_price=D("130"))[1]
        for _ in range(3)
    ]  # fmt: skip
    settings = exec_settings(db_url, redis_url, open_orders_interval=1.0)
    async with live_worker(settings, fake, ws_api_url=None) as app:
        watcher = app.watcher
        assert watcher is not None
        await eventually(
            lambda: all(position_row(db_url, p)["protection"] == "exchange" for p in pids), 20
        )
        await eventually(lambda: len(fake.requests_to("GET", OPEN_ORDERS)) > 0, 10)
        start, read = watcher.passes, watcher.orders_read
        listings = len(fake.requests_to("GET", OPEN_ORDERS))
        await eventually(lambda: watcher.passes >= start + 15, 20)
        passes, orders_read = watcher.passes - start, watcher.orders_read - read
        listed = len(fake.requests_to("GET", OPEN_ORDERS)) - listings
        assert 1 <= listed <= passes // 3
        # six legs read per listing pass, none in the others (a pass may be in between)
        assert orders_read % 6 == 0 and abs(orders_read // 6 - listed) <= 1
        assert orders_read < 6 * passes // 2
        registry = app.metrics.registry  # what an operator sees of it
        total = registry.get_sample_value("position_worker_reconcile_orders_read_total")
        assert total is not None and total >= orders_read
        timed = registry.get_sample_value("position_worker_reconcile_pass_seconds_count")
        assert timed is not None and timed >= passes

        fake.set_price("BTCUSDT", "131")  # the take-profit legs trigger and fill
        await eventually(
            lambda: all(position_row(db_url, p)["status"] == "closed" for p in pids), 20
        )


async def test_lookups_wait_for_the_next_minute_before_a_429_and_exits_go_through() -> None:
    now = [999_980.0]  # 20 s into a minute (999,960 = 16,666 x 60): no roll meanwhile
    with FakeBinance(api_key=KEY, api_secret=SECRET, clock=lambda: now[0]) as fake:
        fake.set_price("BTCUSDT", "100")
        fake.set_rate_limit("REQUEST_WEIGHT", "MINUTE", 1, 200)
        async with BinanceClient(KEY, SECRET, base_url=fake.base_url, clock=lambda: now[0]) as c:
            await c.place_order(OrderRequest("BTCUSDT", "buy", "market", "e-1", D("0.5")))
            sent = 0
            with pytest.raises(BudgetExhausted):
                for _ in range(100):
                    await c.get_order("BTCUSDT", "e-1")
                    sent += 1
            used = c.used["x-mbx-used-weight-1m"]
            assert 140 <= used < 140 + 4  # lookups stop at 70 % of the 200 read in exchangeInfo
            assert len(fake.requests_to("GET", ORDER)) == sent  # the deferred one never left
            with urgent():  # an exit: its price lookup and the order both leave
                state = await c.place_order(
                    OrderRequest("BTCUSDT", "sell", "market", "x-1", D("0.5"))
                )
            assert state.status == "FILLED"
            assert c.used["x-mbx-used-weight-1m"] > used
            now[0] += 40  # the next minute: lookups again
            assert await c.get_order("BTCUSDT", "x-1") is not None
        assert not [r for r in fake.requests if r.status in (418, 429)]


async def test_the_worker_defers_its_listings_before_a_429_and_still_exits(
    db_url: str, redis_url: str
) -> None:
    """REQUEST_WEIGHT 300 per minute, time stopped 20 s into a minute: the safety net's
    listings stop at 70 % (210); an exit requested then still cancels the OCO and sells,
    and Binance never answers 429."""
    now = [999_980.0]
    with FakeBinance(api_key=KEY, api_secret=SECRET, clock=lambda: now[0]) as fake:
        fake.set_price("BTCUSDT", "100")
        fake.set_rate_limit("REQUEST_WEIGHT", "MINUTE", 1, 300)
        _, pid = new_position(db_url, quantity=D("0.5"), is_paper_trade=False,
                              stop_loss_price=D("90"), take_profit_price=D("130"))  # fmt: skip
        settings = exec_settings(db_url, redis_url)
        async with live_worker(settings, fake, clock=lambda: now[0]) as app:
            await eventually(lambda: position_row(db_url, pid)["protection"] == "exchange", 20)
            await eventually(lambda: fake.limits.used_weight()["1M"] >= 210, 20)
            assert app.watcher is not None
            start, listings = app.watcher.passes, len(fake.requests_to("GET", OPEN_ORDERS))
            await eventually(lambda: app.watcher is not None and app.watcher.passes > start + 5, 10)
            assert len(fake.requests_to("GET", OPEN_ORDERS)) == listings  # deferred
            await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
            await wait_status(db_url, pid, "closed")
        assert position_row(db_url, pid)["close_reason"] == "user"
        assert fake.limits.used_weight()["1M"] < 300
        assert not [r for r in fake.requests if r.status in (418, 429)]
