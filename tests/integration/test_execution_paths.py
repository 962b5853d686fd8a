"""Engine paths beyond the happy one: partial fills, fee assets, shorts, max loss."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from functools import partial
from typing import Any

import psycopg
import pytest
import structlog

from tests.execution_support import (
    call,
    call_off_loop,
    exec_settings,
    live_worker,
    new_position,
    orders,
    position,
    wait_status,
)
from tests.pipeline_support import eventually
from tests.support import insert_position, seed_owner
from worker.app import App
from worker.exchanges.paper import PaperExchange
from worker.exchanges.prices import FixedPrices
from worker.execution.routing import ExchangeRouter
from worker.settings import Settings
from worker.testing.fake_binance import FakeBinance

pytestmark = pytest.mark.anyio
D = Decimal


async def test_entry_that_partly_fills_then_expires_opens_with_what_filled(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    fake.set_liquidity("BTCUSDT", "0.3")  # the market order for 0.5 fills 0.3, then EXPIRED
    _, pid = new_position(db_url, quantity=D("0.5"), is_paper_trade=False)
    async with live_worker(exec_settings(db_url, redis_url), fake):
        await wait_status(db_url, pid, "monitoring")
    opened = position(db_url, pid)
    assert (opened["entry_quantity"], opened["held_quantity"]) == (D("0.3"), D("0.3"))
    [entry] = orders(db_url, pid)
    assert (entry["status"], entry["filled_quantity"], entry["exchange_status"]) == (
        "cancelled",
        D("0.3"),
        "EXPIRED",
    )


async def test_fees_in_bnb_are_valued_at_fill_time_and_counted_once(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    fake.set_commission("0.001", "BNB")  # BNBUSDT 500: 0.05 USDT fee = 0.0001 BNB
    _, pid = new_position(db_url, quantity=D("0.5"), is_paper_trade=False)
    async with live_worker(exec_settings(db_url, redis_url), fake):
        await wait_status(db_url, pid, "monitoring")
        fake.set_price("BNBUSDT", "400")  # revaluing later must not change recorded fees
        fake.set_price("BTCUSDT", "120")
        await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
        await wait_status(db_url, pid, "closed")
    closed = position(db_url, pid)
    # entry fee 0.05 USDT (0.0001 BNB @ 500), exit fee 0.06 USDT (0.00015 BNB @ 400)
    assert closed["fees_paid"] == D("0.11")
    assert closed["realized_pnl"] == D("9.89")
    assert closed["held_quantity"] == 0


async def test_fee_in_the_received_base_asset_shrinks_the_holding_and_the_exit_sells_it(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    fake.set_commission("0.001", "received")  # buy 0.5 BTC -> 0.0005 BTC fee
    _, pid = new_position(db_url, quantity=D("0.5"), is_paper_trade=False)
    async with live_worker(exec_settings(db_url, redis_url), fake):
        await wait_status(db_url, pid, "monitoring")
        assert position(db_url, pid)["held_quantity"] == D("0.4995")
        await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
        await wait_status(db_url, pid, "closed")
    exit_order = orders(db_url, pid)[-1]
    assert (exit_order["purpose"], exit_order["quantity"]) == ("exit", D("0.4995"))
    assert position(db_url, pid)["held_quantity"] == 0


async def test_a_full_exit_that_leaves_only_fee_dust_closes_the_position(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    """Buy 0.33333 BTC, 0.1 % fee in BTC: 0.33299667 held, of which the exit can sell only
    0.33299 (step 0.00001). The 0.00000667 left cannot be sold by any order: the position is
    closed, not reopened with a critical "exit failed" notification."""
    fake.set_commission("0.001", "received")
    _, pid = new_position(db_url, quantity=D("0.33333"), is_paper_trade=False)
    async with live_worker(exec_settings(db_url, redis_url), fake):
        await wait_status(db_url, pid, "monitoring")
        assert position(db_url, pid)["held_quantity"] == D("0.33299667")
        await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
        # the exit order filled (the entry order is filled already: it does not count),
        # then the position leaves closing, closed or (wrongly) reopened
        await eventually(lambda: exit_filled(orders(db_url, pid)), 10)
        await wait_status(db_url, pid, "closed", "open", "monitoring")
    closed = position(db_url, pid)
    assert (closed["status"], closed["failure_reason"]) == ("closed", None)
    assert (closed["exit_quantity"], closed["held_quantity"]) == (D("0.33299"), D("0.00000667"))
    exit_order = orders(db_url, pid)[-1]
    assert (exit_order["purpose"], exit_order["status"]) == ("exit", "filled")


def exit_filled(rows: list[dict[str, Any]]) -> bool:
    return any(o["purpose"] == "exit" and o["status"] == "filled" for o in rows)


async def test_live_position_without_an_exchange_account_fails_cleanly(
    db_url: str, redis_url: str
) -> None:
    paper = PaperExchange(FixedPrices({"BTCUSDT": D("100")}), clock=lambda: 1_760_000_000_000)
    _, pid = new_position(db_url, quantity=D("0.5"), is_paper_trade=False)
    async with paper_worker(exec_settings(db_url, redis_url), paper):
        await wait_status(db_url, pid, "failed")
        await eventually(
            lambda: (
                call(db_url, "SELECT count(*) FROM position_events WHERE processed_at IS NULL") == 0
            ),
            10,
        )
    # the user can act on it: connect an account, or trade on paper
    reason = position(db_url, pid)["failure_reason"]
    assert "no exchange account" in reason and "add_exchange_account" in reason
    assert call(db_url, "SELECT count(*) FROM position_events WHERE dead_at IS NOT NULL") == 0


async def test_a_short_sells_first_and_buys_back(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    _, pid = new_position(db_url, quantity=D("0.5"), side="short", is_paper_trade=False)
    async with live_worker(exec_settings(db_url, redis_url), fake):
        await wait_status(db_url, pid, "monitoring")
        fake.set_price("BTCUSDT", "90")
        await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
        await wait_status(db_url, pid, "closed")
    assert [o["side"] for o in orders(db_url, pid)] == ["sell", "buy"]
    # sold 0.5 @ 100 (fee 0.05), bought back @ 90 (fee 0.045): 5 - 0.095
    assert position(db_url, pid)["realized_pnl"] == D("4.905")


@asynccontextmanager
async def paper_worker(settings: Settings, paper: PaperExchange) -> AsyncIterator[App]:
    app = App(settings, handle_signals=False, router=ExchangeRouter(paper=paper))
    async with app.serving():
        yield app


class WatchedPrices(FixedPrices):
    """Fixed prices that record every price they were asked for."""

    def __init__(self, prices: dict[str, Decimal]) -> None:
        super().__init__(prices)
        self.reads: list[tuple[str, Decimal]] = []

    async def price(self, symbol: str) -> Decimal:
        price = await super().price(symbol)
        self.reads.append((symbol, price))
        return price


async def wait_passes(app: App, n: int) -> None:
    """Until ``n`` more passes of the watcher (reconciliation, paper protection) are done."""
    watcher = app.watcher
    assert watcher is not None
    target = watcher.passes + n
    await eventually(lambda: watcher.passes >= target, 15)


async def test_paper_max_loss_closes_the_position_when_the_loss_reaches_the_limit(
    db_url: str, redis_url: str
) -> None:
    prices = WatchedPrices({"BTCUSDT": D("100"), "BNBUSDT": D("500")})
    paper = PaperExchange(prices, clock=lambda: 1_760_000_000_000)
    _, pid = new_position(
        db_url, quantity=D("1"), max_loss_usdt=D("5"), is_paper_trade=True
    )  # max loss 5 USDT on 1 BTC bought at 100: stop at 95
    async with paper_worker(exec_settings(db_url, redis_url), paper) as app:
        await wait_status(db_url, pid, "monitoring")
        prices.set("BTCUSDT", D("96"))
        seen = len(prices.reads)
        # 96 is above the max-loss stop: two whole passes of the paper protection (the first
        # may have begun before the price moved) look at it, and nothing may happen
        await wait_passes(app, 2)
        assert ("BTCUSDT", D("96")) in prices.reads[seen:], "the protection never read 96"
        assert position(db_url, pid)["status"] == "monitoring"
        assert [o["purpose"] for o in orders(db_url, pid)] == ["entry"], "an order was sent"
        requests = "SELECT count(*) FROM position_requests WHERE position_id = %s"
        assert call(db_url, requests, pid) == 0, "an exit was requested"
        prices.set("BTCUSDT", D("94"))
        await wait_status(db_url, pid, "closed")
    assert position(db_url, pid)["close_reason"] == "max_loss"


@pytest.mark.parametrize("listing_every", [0.0, 60.0])
async def test_a_reconcile_pass_looks_up_only_the_paper_orders_that_changed(
    db_url: str, redis_url: str, listing_every: float
) -> None:
    """A user's many resting paper orders cost a pass one match and one listing, not a
    lookup each: when the price fills another user's order, that position alone is
    driven (issue 20: one user's resting orders held up another user's fill). Between
    listings (the paper book listed once a minute) a pass does not even read the resting
    orders, nor probe the waiting positions for one left with no order in flight: only the
    order the price moved."""
    prices = WatchedPrices({"BTCUSDT": D("100")})
    paper = PaperExchange(prices, clock=lambda: 1_760_000_000_000)
    with psycopg.connect(db_url, autocommit=True) as conn:
        flooder, other = seed_owner(conn), seed_owner(conn)
        resting = [
            insert_position(conn, flooder, limit_price=D("50"), is_paper_trade=True)
            for _ in range(30)
        ]
        filled = insert_position(conn, other, limit_price=D("90"), is_paper_trade=True)
    settings = exec_settings(db_url, redis_url, open_orders_interval=listing_every)
    async with paper_worker(settings, paper) as app:
        for pid in [*resting, filled]:
            await eventually(partial(_entry_is, db_url, pid, "submitted"), 20)
        assert app.engine is not None and app.watcher is not None
        driven: list[str] = []
        reconcile = app.engine.reconcile

        async def counted(position_id: str) -> None:
            driven.append(position_id)
            await reconcile(position_id)

        app.engine.reconcile = counted  # type: ignore[method-assign]
        await wait_passes(app, 2)
        assert driven == [], "unchanged resting orders were looked up"
        read, checks = app.watcher.orders_read, app.watcher.waiting_checks
        await wait_passes(app, 2)
        between = app.watcher.orders_read - read
        checked = app.watcher.waiting_checks - checks
        prices.set("BTCUSDT", D("85"))  # crosses the other user's 90, not the flooder's 50
        await wait_status(db_url, filled, "open", "monitoring")
        await wait_passes(app, 2)
    assert set(driven) == {str(filled)}
    if listing_every:
        assert between == 0, "passes between listings read the resting orders"
        assert checked == 0, "passes between listings probed every waiting position"
    else:  # every pass lists, and reads the 31 orders (a third pass may have begun)
        assert between in (2 * 31, 3 * 31)
        assert checked in (2, 3)
    assert {_entry_status(db_url, pid) for pid in resting} == {"submitted"}


async def test_a_position_left_waiting_is_entered_by_the_listing_pass_which_says_so(
    db_url: str, redis_url: str
) -> None:
    """A position whose events were all handled but which was never entered (its entry
    event dead after its retries, or a crash before its entry order was recorded) is
    entered by a reconcile pass, with a warning naming it: the safety net caught what the
    events did not, which an operator wants to know."""
    paper = PaperExchange(FixedPrices({"BTCUSDT": D("100")}), clock=lambda: 1_760_000_000_000)
    with psycopg.connect(db_url, autocommit=True) as conn:
        pid = insert_position(conn, seed_owner(conn), is_paper_trade=True)
        conn.execute(
            "UPDATE position_events SET processed_at = now() WHERE position_id = %s", (pid,)
        )
    capture = structlog.testing.LogCapture()
    app = App(
        exec_settings(db_url, redis_url), handle_signals=False, router=ExchangeRouter(paper=paper)
    )
    app.log = structlog.wrap_logger(None, processors=[capture])
    async with app.serving():
        await wait_status(db_url, pid, "open", "monitoring")
    [line] = [e for e in capture.entries if e["event"] == "waiting_positions_picked_up"]
    assert (line["log_level"], line["count"], line["position_ids"]) == ("warning", 1, [str(pid)])


def _entry_status(db_url: str, pid: Any) -> str | None:
    return call(db_url, "SELECT status FROM orders WHERE position_id = %s", pid)  # type: ignore[no-any-return]


def _entry_is(db_url: str, pid: Any, status: str) -> bool:
    return _entry_status(db_url, pid) == status
