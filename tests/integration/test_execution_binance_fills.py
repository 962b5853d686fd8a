"""The engine on Binance (the fake on loopback): how fills are found and settled.

More fills than one ``myTrades`` page, a trade list that lags the order, a cancel that
raced the order's fill (-2011), self-trade prevention (EXPIRED_IN_MATCH) and an exit
requested while a limit entry is partly filled.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.execution_support import (
    call_off_loop,
    exec_settings,
    live_worker,
    new_position,
    orders,
    position,
    wait_held,
    wait_status,
)
from tests.pipeline_support import eventually
from worker.testing.fake_binance import FakeBinance, Fault, FaultKind

pytestmark = pytest.mark.anyio
D = Decimal
ORDER = "/api/v3/order"
MY_TRADES = "/api/v3/myTrades"
FINAL = ("filled", "cancelled", "failed")


def resting(fake: FakeBinance) -> list[dict[str, Any]]:
    return [o for o in fake.orders() if o["status"] in ("NEW", "PARTIALLY_FILLED")]


async def wait_resting(fake: FakeBinance, n: int) -> None:
    await eventually(lambda: len(resting(fake)) == n, 10)


def trades_of(db_url: str, pid: uuid.UUID) -> list[tuple[Any, ...]]:
    return [
        (row["order_id"], row["binance_trade_id"], row["quantity"])
        for row in _query(db_url, "SELECT * FROM trades WHERE position_id = %s", pid)
    ]


def requests_of(db_url: str, pid: uuid.UUID) -> list[dict[str, Any]]:
    sql = "SELECT * FROM position_requests WHERE position_id = %s ORDER BY created_at"
    return _query(db_url, sql, pid)


def _query(db_url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        return conn.execute(sql, args).fetchall()


def assert_one_exchange_order_per_intent(fake: FakeBinance, db_url: str, pid: uuid.UUID) -> None:
    for order in orders(db_url, pid):
        cid = order["client_order_id"]
        assert fake.posted_client_ids().count(cid) == 1, cid  # single or OCO leg
        assert fake.order_count(cid) == 1, cid


async def wait_settled(db_url: str, pid: uuid.UUID) -> None:
    """Every order of the position final and no request pending."""
    await eventually(
        lambda: (
            all(o["status"] in FINAL for o in orders(db_url, pid))
            and all(r["status"] != "pending" for r in requests_of(db_url, pid))
        ),
        10,
    )


# -- more fills than one myTrades page ------------------------------------------------------


async def test_orders_with_more_fills_than_a_trades_page_are_recorded_fill_by_fill(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    """Entry and stop-loss each fill in 7 trades, read 3 per myTrades page: the entry's
    answer is lost (found by reconciliation), the stop fires on the exchange (found by the
    reconciler too), so every fill comes from the paged trade list."""
    fake.set_partial_fills(7, price_step="0.01")
    fake.faults.push(Fault.drop_after_apply())
    _, pid = new_position(db_url, quantity=D("0.7"), is_paper_trade=False, stop_loss_price=D("90"))
    # the REST path (myTrades paged): the user data stream off
    async with live_worker(
        exec_settings(db_url, redis_url), fake, trades_page_size=3, ws_api_url=None
    ):
        await wait_status(db_url, pid, "monitoring", timeout=30)
        await wait_resting(fake, 1)
        fake.set_price("BTCUSDT", "90")
        await wait_status(db_url, pid, "closed")
        await wait_settled(db_url, pid)
    closed = position(db_url, pid)
    assert (closed["entry_price"], closed["entry_quantity"]) == (D("100.03"), D("0.7"))
    assert (closed["exit_price"], closed["exit_quantity"]) == (D("89.97"), D("0.7"))
    assert closed["entry_cost"] == D("70.091021")
    assert closed["fees_paid"] == D("0.133")
    assert closed["realized_pnl"] == D("-7.175")
    assert closed["realized_pnl_percent"] == D("-10.2367")
    assert closed["held_quantity"] == 0
    assert closed["close_reason"] == "stop_loss"

    entry, stop = orders(db_url, pid)
    assert (entry["status"], stop["status"]) == ("filled", "filled")
    assert entry["filled_quantity"] == stop["filled_quantity"] == D("0.7")
    recorded = trades_of(db_url, pid)
    assert len(recorded) == 14  # every fill exactly once
    assert {t[1] for t in recorded} == {str(t["id"]) for t in fake.trades()}
    for order in (entry, stop):
        exchange_id = order["binance_order_id"]
        pages = [
            r for r in fake.requests_to("GET", MY_TRADES) if r.params["orderId"] == exchange_id
        ]
        ids = sorted(t["id"] for t in fake.trades() if str(t["orderId"]) == exchange_id)
        assert [r.params["fromId"] for r in pages[:3]] == ["0", str(ids[3]), str(ids[6])]
        assert all(r.params["limit"] == "3" for r in pages)
    assert_one_exchange_order_per_intent(fake, db_url, pid)


async def test_an_order_is_not_settled_before_its_trades_are_listed(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    """Binance serves myTrades from "Memory => Database": right after a fill it can list
    fewer trades than the order executed. The entry stays unsettled until they show."""
    fake.set_trades_lag(2)
    fake.faults.push(Fault.drop_after_apply())  # the answer with the fills is lost
    _, pid = new_position(db_url, quantity=D("0.5"), is_paper_trade=False)
    # the REST path (order lookups, myTrades): the user data stream off
    async with live_worker(exec_settings(db_url, redis_url), fake, ws_api_url=None):
        await wait_status(db_url, pid, "monitoring", timeout=30)
    opened = position(db_url, pid)
    assert (opened["held_quantity"], opened["entry_quantity"]) == (D("0.5"), D("0.5"))
    assert opened["entry_price"] == D("100")
    [entry] = orders(db_url, pid)
    assert (entry["status"], entry["filled_quantity"]) == ("filled", D("0.5"))
    answers = [r for r in fake.requests_to("GET", MY_TRADES) if r.status == 200]
    assert len(answers) >= 3  # two answers without the trade, then the one with it
    assert len(trades_of(db_url, pid)) == 1


# -- a cancel that raced the order's fill ---------------------------------------------------


@pytest.mark.parametrize(
    ("racing", "other", "fill_price", "pnl", "pnl_percent"),
    [
        ("take_profit", "stop_loss", "130", "14.885", "29.7403"),
        ("stop_loss", "take_profit", "90", "-5.095", "-10.1798"),
    ],
)
async def test_exit_whose_cancel_of_a_protective_order_raced_its_fill(
    db_url: str,
    redis_url: str,
    fake: FakeBinance,
    racing: str,
    other: str,
    fill_price: str,
    pnl: str,
    pnl_percent: str,
) -> None:
    """The user asks to exit; cancelling the protective orders first, the worker's cancel
    of one meets it filling (-2011 "Unknown order sent."). The worker looks the order up
    instead of trusting the cancel: the fill is recorded and closes the position, and no
    exit order is sent for coins that are gone."""
    _, pid = new_position(
        db_url,
        quantity=D("0.5"),
        is_paper_trade=False,
        stop_loss_price=D("90"),
        take_profit_price=D("130"),
    )
    async with live_worker(exec_settings(db_url, redis_url), fake):
        await wait_status(db_url, pid, "monitoring")
        await wait_resting(fake, 2)
        ids = {o["purpose"]: o["client_order_id"] for o in orders(db_url, pid)}
        # one OCO list: the exit's first cancel (of the stop-loss leg) meets the list done,
        # ``racing`` filled (the other leg expired by the exchange)
        fake.faults.push(Fault.cancel_race(ids["stop_loss"], fills=ids[racing]))
        await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
        await wait_status(db_url, pid, "closed")
        await wait_settled(db_url, pid)
    closed = position(db_url, pid)
    assert closed["close_reason"] == racing
    assert (closed["exit_price"], closed["exit_quantity"]) == (D(fill_price), D("0.5"))
    assert closed["realized_pnl"] == D(pnl)
    assert closed["realized_pnl_percent"] == D(pnl_percent)
    assert closed["held_quantity"] == 0
    statuses = {o["purpose"]: o["status"] for o in orders(db_url, pid)}
    assert statuses == {"entry": "filled", racing: "filled", other: "cancelled"}  # no exit
    [request] = requests_of(db_url, pid)
    assert request["status"] == "rejected" and "closed" in request["error"]
    cancels = fake.requests_to("DELETE", ORDER)
    assert len(cancels) == 2  # each protective order once: the raced one is not retried
    assert [r.fault for r in cancels].count(FaultKind.CANCEL_RACE) == 1
    assert resting(fake) == []
    assert_one_exchange_order_per_intent(fake, db_url, pid)


# -- EXPIRED_IN_MATCH (self-trade prevention) -----------------------------------------------


async def test_expired_in_match_entry_and_exit_keep_what_filled(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    fake.expire_in_match("BTCUSDT", after="0.3")
    _, pid = new_position(db_url, quantity=D("0.5"), is_paper_trade=False, stop_loss_price=D("90"))
    settings = exec_settings(db_url, redis_url)
    async with live_worker(settings, fake):
        await wait_status(db_url, pid, "monitoring")
        await wait_resting(fake, 1)
        opened = position(db_url, pid)
        assert (opened["entry_quantity"], opened["held_quantity"]) == (D("0.3"), D("0.3"))
        entry, stop = orders(db_url, pid)
        assert (entry["status"], entry["exchange_status"]) == ("cancelled", "EXPIRED_IN_MATCH")
        assert entry["filled_quantity"] == D("0.3")
        assert stop["quantity"] == D("0.3")  # protection sized by what is held

        fake.set_price("BTCUSDT", "110")
        fake.expire_in_match("BTCUSDT", after="0.1")
        await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
        await wait_held(db_url, pid, "0.2")
        await wait_status(db_url, pid, "open", "monitoring")
        reopened = position(db_url, pid)
        assert "expired_in_match" in reopened["failure_reason"]
        assert reopened["exit_quantity"] == D("0.1")

        await call_off_loop(
            db_url, "SELECT request_position_exit(%s)", pid
        )  # again: sells the 0.2 left
        await wait_status(db_url, pid, "closed")
        await wait_settled(db_url, pid)
    closed = position(db_url, pid)
    assert (closed["exit_quantity"], closed["exit_price"]) == (D("0.3"), D("110"))
    assert closed["realized_pnl"] == D("2.937")
    assert closed["realized_pnl_percent"] == D("9.7802")
    exits = [o for o in orders(db_url, pid) if o["purpose"] == "exit"]
    assert [(o["quantity"], o["filled_quantity"], o["exchange_status"]) for o in exits] == [
        (D("0.3"), D("0.1"), "EXPIRED_IN_MATCH"),
        (D("0.2"), D("0.2"), "FILLED"),
    ]
    assert resting(fake) == []
    assert_one_exchange_order_per_intent(fake, db_url, pid)


async def test_entry_expired_in_match_with_nothing_filled_fails(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    fake.expire_in_match("BTCUSDT")
    _, pid = new_position(db_url, quantity=D("0.5"), is_paper_trade=False, stop_loss_price=D("90"))
    async with live_worker(exec_settings(db_url, redis_url), fake):
        await wait_status(db_url, pid, "failed")
    failed = position(db_url, pid)
    assert "expired_in_match with nothing filled" in failed["failure_reason"]
    assert [o["purpose"] for o in orders(db_url, pid)] == ["entry"]  # no protection placed
    assert resting(fake) == []


# -- an exit requested while a limit entry is partly filled ---------------------------------


@pytest.mark.parametrize(
    ("race", "bought", "held", "pnl"),
    [
        (False, "0.2", "0.1998", "-0.037981"),
        (True, "0.5", "0.4995", "-0.0949525"),  # the entry's cancel meets its last fill
    ],
    ids=["cancelled-partly-filled", "cancel-raced-the-fill"],
)
async def test_exit_requested_while_a_limit_entry_is_partly_filled(
    db_url: str, redis_url: str, fake: FakeBinance, race: bool, bought: str, held: str, pnl: str
) -> None:
    """The entry is cancelled (or found filled when the cancel raced it), the position opens
    with what filled, and the exit sells what is held: net of the fee Binance took in BTC."""
    fake.set_commission("0.001", "received")
    fake.set_liquidity("BTCUSDT", "0.2")
    _, pid = new_position(
        db_url,
        quantity=D("0.5"),
        limit_price=D("95"),
        is_paper_trade=False,
        stop_loss_price=D("80"),
        take_profit_price=D("130"),
    )
    async with live_worker(exec_settings(db_url, redis_url), fake):
        await wait_resting(fake, 1)
        fake.set_price("BTCUSDT", "95")  # 0.2 of the 0.5 fills; the rest keeps resting
        await eventually(lambda: orders(db_url, pid)[0]["filled_quantity"] == D("0.2"), 10)
        assert position(db_url, pid)["status"] == "submitting"
        fake.set_liquidity("BTCUSDT", None)
        if race:
            fake.faults.push(Fault.cancel_race(orders(db_url, pid)[0]["client_order_id"]))
        await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
        await wait_status(db_url, pid, "closed")
        await wait_settled(db_url, pid)
    closed = position(db_url, pid)
    assert (closed["entry_quantity"], closed["entry_price"]) == (D(bought), D("95"))
    assert (closed["exit_quantity"], closed["exit_price"]) == (D(held), D("95"))
    assert closed["realized_pnl"] == D(pnl)
    assert closed["realized_pnl_percent"] == D("-0.1999")
    assert closed["held_quantity"] == 0
    assert closed["close_reason"] == "user"
    entry, exit_ = orders(db_url, pid)  # no stop-loss / take-profit: the exit was pending
    assert (entry["purpose"], entry["filled_quantity"]) == ("entry", D(bought))
    assert entry["status"] == ("filled" if race else "cancelled")
    assert (exit_["purpose"], exit_["quantity"], exit_["status"]) == ("exit", D(held), "filled")
    [request] = requests_of(db_url, pid)
    assert (request["status"], request["order_id"]) == ("done", exit_["id"])
    assert resting(fake) == []
    assert_one_exchange_order_per_intent(fake, db_url, pid)


async def test_exit_requested_before_a_limit_entry_fills_fails_the_position(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    _, pid = new_position(db_url, quantity=D("0.5"), limit_price=D("95"), is_paper_trade=False)
    async with live_worker(exec_settings(db_url, redis_url), fake):
        await wait_resting(fake, 1)
        await eventually(lambda: orders(db_url, pid)[0]["status"] == "submitted", 10)
        await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
        await wait_status(db_url, pid, "failed")
        await wait_settled(db_url, pid)
    failed = position(db_url, pid)
    assert "canceled with nothing filled" in failed["failure_reason"]
    [entry] = orders(db_url, pid)
    assert (entry["status"], entry["exchange_status"]) == ("cancelled", "CANCELED")
    [request] = requests_of(db_url, pid)
    assert request["status"] == "done" and "nothing to exit" in request["error"]
    assert resting(fake) == []


# -- a partly filled order that keeps resting -------------------------------------------------


async def test_a_partly_filled_order_fetches_only_new_fills_and_only_when_it_changed(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    """A limit entry fills 0.2 at a time. While it rests unchanged, reconciliation passes
    ask for no trades and write nothing; when it fills again, only the trades after the last
    recorded one are asked for (``fromId``)."""
    fake.set_liquidity("BTCUSDT", "0.2")
    _, pid = new_position(db_url, quantity=D("0.5"), limit_price=D("95"), is_paper_trade=False)
    # the REST path (order lookups, myTrades): the user data stream off
    async with live_worker(exec_settings(db_url, redis_url), fake, ws_api_url=None) as app:
        watcher = app.watcher
        assert watcher is not None

        async def passes(n: int) -> None:
            target = watcher.passes + n
            await eventually(lambda: watcher.passes >= target, 15)

        await wait_resting(fake, 1)
        fake.set_price("BTCUSDT", "95")  # 0.2 fills
        await eventually(lambda: orders(db_url, pid)[0]["filled_quantity"] == D("0.2"), 10)
        await passes(1)
        [entry] = orders(db_url, pid)
        exchange_id = entry["binance_order_id"]
        asked = len(fake.requests_to("GET", MY_TRADES))
        version = _query(db_url, "SELECT xmin::text FROM orders WHERE id = %s", entry["id"])
        await passes(3)
        assert len(fake.requests_to("GET", MY_TRADES)) == asked  # nothing new: not asked
        assert _query(db_url, "SELECT xmin::text FROM orders WHERE id = %s", entry["id"]) == (
            version
        )

        fake.set_price("BTCUSDT", "96")
        fake.set_price("BTCUSDT", "95")  # another 0.2
        await eventually(lambda: orders(db_url, pid)[0]["filled_quantity"] == D("0.4"), 10)
        fake.set_liquidity("BTCUSDT", None)
        fake.set_price("BTCUSDT", "96")
        fake.set_price("BTCUSDT", "95")  # the last 0.1
        await wait_status(db_url, pid, "monitoring")
    first, second, _ = sorted(t["id"] for t in fake.trades())
    pages = [r for r in fake.requests_to("GET", MY_TRADES) if r.params["orderId"] == exchange_id]
    assert [r.params["fromId"] for r in pages] == ["0", str(first + 1), str(second + 1)]
    assert len(trades_of(db_url, pid)) == 3
    opened = position(db_url, pid)
    assert (opened["entry_quantity"], opened["entry_price"]) == (D("0.5"), D("95"))
    [entry] = orders(db_url, pid)
    assert (entry["status"], entry["filled_quantity"]) == ("filled", D("0.5"))
