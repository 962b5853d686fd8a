"""A stop-loss and a take-profit on Binance spot rest as one OCO order list.

Binance locks the balance an open order needs: two separate full-size SELLs of one holding
cannot both rest (the second is refused with -2010). The fake Binance here enforces
balances with that locking, so these tests fail if the engine sends the pair separately.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from tests.execution_support import (
    KEY,
    SECRET,
    assert_matches_exchange,
    call_off_loop,
    exec_settings,
    live_worker,
    new_position,
    orders,
    position,
    wait_status,
)
from tests.pipeline_support import eventually
from worker.exchanges.base import OcoRequest, OrderRejected, OrderRequest
from worker.exchanges.binance import BinanceClient
from worker.testing.fake_binance import FakeBinance, Fault

pytestmark = pytest.mark.anyio
D = Decimal
ORDER = "/api/v3/order"
OCO = "/api/v3/orderList/oco"
LIVE = ("created", "submitted", "partially_filled")


@pytest.fixture
def locked(fake: FakeBinance) -> FakeBinance:
    """The fake with balances enforced and locked by open orders, as on Binance."""
    fake.set_balances({"USDT": "100000", "BTC": "0"})
    return fake


def protected_position(db_url: str) -> uuid.UUID:
    """0.5 BTC bought at 100 (fee 0.1 % in USDT: 0.5 BTC held), stop 90, take-profit 130."""
    _, pid = new_position(
        db_url,
        quantity=D("0.5"),
        is_paper_trade=False,
        stop_loss_price=D("90"),
        take_profit_price=D("130"),
    )
    return pid


def resting(fake: FakeBinance) -> list[dict[str, Any]]:
    return [o for o in fake.orders() if o["status"] in ("NEW", "PARTIALLY_FILLED")]


def rejections(fake: FakeBinance) -> list[Any]:
    """Orders the fake refused on its own (scripted faults aside): -2010 and the like. (A
    cancel of a leg its list already ended answers -2011, a lookup of an order not there
    -2013: those are expected.)"""
    return [r for r in fake.requests if r.method == "POST" and r.status == 400 and not r.fault]


def protected_by_oco(fake: FakeBinance, db_url: str, pid: uuid.UUID, held: str) -> bool:
    """One live stop-loss and one take-profit, both accepted, sized ``held``, and exactly
    those two resting on the exchange, as the two legs of one order list."""
    live = [o for o in orders(db_url, pid) if o["status"] in LIVE and o["purpose"] != "entry"]
    if sorted(o["purpose"] for o in live) != ["stop_loss", "take_profit"]:
        return False
    if any(o["status"] != "submitted" or o["quantity"] != D(held) for o in live):
        return False
    on_exchange = resting(fake)
    lists = {o["orderListId"] for o in on_exchange}
    return (
        {o["clientOrderId"] for o in on_exchange} == {o["client_order_id"] for o in live}
        and len(lists) == 1
        and lists != {-1}
    )


async def wait_oco(fake: FakeBinance, db_url: str, pid: uuid.UUID, held: str) -> None:
    await eventually(lambda: protected_by_oco(fake, db_url, pid, held), 15)


def legs(db_url: str, pid: uuid.UUID) -> dict[str, list[str]]:
    by_purpose: dict[str, list[str]] = {}
    for order in orders(db_url, pid):
        by_purpose.setdefault(order["purpose"], []).append(order["status"])
    return by_purpose


# -- the fake: balances locked by open orders ------------------------------------------------


@pytest.fixture
async def client(locked: FakeBinance) -> AsyncIterator[BinanceClient]:
    async with BinanceClient(KEY, SECRET, base_url=locked.base_url, timeout_s=2.0) as c:
        yield c


async def test_a_second_full_size_sell_is_refused_but_an_oco_rests(
    locked: FakeBinance, client: BinanceClient
) -> None:
    await client.place_order(OrderRequest("BTCUSDT", "buy", "market", "buy-1", D("0.5")))
    stop = OrderRequest("BTCUSDT", "sell", "stop_loss", "sl-1", D("0.5"), stop_price=D("90"))
    take = OrderRequest("BTCUSDT", "sell", "take_profit", "tp-1", D("0.5"), stop_price=D("130"))
    await client.place_order(stop)
    with pytest.raises(OrderRejected) as err:
        await client.place_order(take)
    assert err.value.code == -2010 and "insufficient balance" in err.value.msg
    await client.cancel_order("BTCUSDT", "sl-1")
    oco = OcoRequest("BTCUSDT", "sell", D("0.5"), "list-1", "sl-2", D("90"), "tp-2", D("130"))
    states = await client.place_oco(oco)
    assert {s.client_order_id: s.status for s in states} == {"sl-2": "NEW", "tp-2": "NEW"}
    assert locked.book.locked("BTC") == D("0.5")  # once for the list
    # cancelling one leg cancels the list
    assert (await client.cancel_order("BTCUSDT", "tp-2")).status == "CANCELED"
    other = await client.get_order("BTCUSDT", "sl-2")
    assert other is not None and other.status == "CANCELED"
    assert locked.book.locked("BTC") == 0


async def test_an_oco_whose_stop_would_trigger_at_once_is_refused(client: BinanceClient) -> None:
    oco = OcoRequest("BTCUSDT", "sell", D("0.5"), "list-2", "sl-3", D("101"), "tp-3", D("130"))
    with pytest.raises(OrderRejected) as err:
        await client.place_oco(oco)
    assert err.value.code == -2010


# -- the engine ------------------------------------------------------------------------------


async def test_stop_loss_and_take_profit_rest_as_one_oco(
    db_url: str, redis_url: str, locked: FakeBinance
) -> None:
    pid = protected_position(db_url)
    async with live_worker(exec_settings(db_url, redis_url), locked):
        await wait_status(db_url, pid, "monitoring")
        await wait_oco(locked, db_url, pid, "0.5")
    [post] = locked.requests_to("POST", OCO)
    assert (post.params["aboveType"], post.params["belowType"]) == ("TAKE_PROFIT", "STOP_LOSS")
    prices = (D(post.params["aboveStopPrice"]), D(post.params["belowStopPrice"]))
    assert prices == (D("130"), D("90"))
    assert [r.params["newClientOrderId"] for r in locked.requests_to("POST", ORDER)] == [
        orders(db_url, pid)[0]["client_order_id"]  # the entry only
    ]
    assert rejections(locked) == []
    assert locked.book.locked("BTC") == D("0.5")
    assert_matches_exchange(db_url, locked, pid)


async def test_take_profit_fills_and_the_exchange_cancels_the_stop(
    db_url: str, redis_url: str, locked: FakeBinance
) -> None:
    pid = protected_position(db_url)
    async with live_worker(exec_settings(db_url, redis_url), locked):
        await wait_status(db_url, pid, "monitoring")
        await wait_oco(locked, db_url, pid, "0.5")
        locked.set_price("BTCUSDT", "131")
        await wait_status(db_url, pid, "closed")
        await eventually(lambda: all(o["status"] not in LIVE for o in orders(db_url, pid)), 10)
    closed = position(db_url, pid)
    assert closed["close_reason"] == "take_profit"
    assert closed["exit_price"] == D("131")  # a TAKE_PROFIT is a market order once triggered
    # 0.5 x 131 = 65.5 - fee 0.0655, less the cost 50 + 0.05
    assert closed["realized_pnl"] == D("15.3845")
    assert closed["held_quantity"] == 0
    assert legs(db_url, pid) == {
        "entry": ["filled"],
        "stop_loss": ["cancelled"],
        "take_profit": ["filled"],
    }
    [stop] = [o for o in orders(db_url, pid) if o["purpose"] == "stop_loss"]
    assert stop["exchange_status"] == "EXPIRED"  # the exchange ended it with the list
    assert resting(locked) == []
    assert locked.book.balances is not None and locked.book.balances["BTC"] == 0
    assert rejections(locked) == []
    assert len(locked.requests_to("POST", OCO)) == 1
    assert_matches_exchange(db_url, locked, pid)


async def test_an_exit_cancels_the_list_and_sells(
    db_url: str, redis_url: str, locked: FakeBinance
) -> None:
    pid = protected_position(db_url)
    async with live_worker(exec_settings(db_url, redis_url), locked):
        await wait_status(db_url, pid, "monitoring")
        await wait_oco(locked, db_url, pid, "0.5")
        locked.set_price("BTCUSDT", "120")
        await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
        await wait_status(db_url, pid, "closed")
    closed = position(db_url, pid)
    assert (closed["close_reason"], closed["exit_price"]) == ("user", D("120"))
    assert closed["realized_pnl"] == D("9.89")  # 60 - 0.06 - 50.05
    assert legs(db_url, pid) == {
        "entry": ["filled"],
        "stop_loss": ["cancelled"],
        "take_profit": ["cancelled"],
        "exit": ["filled"],
    }
    assert resting(locked) == []
    assert rejections(locked) == []
    assert len(locked.requests_to("DELETE", ORDER)) >= 1
    assert_matches_exchange(db_url, locked, pid)


async def test_an_exit_that_fails_puts_the_oco_back(
    db_url: str, redis_url: str, locked: FakeBinance
) -> None:
    pid = protected_position(db_url)
    async with live_worker(exec_settings(db_url, redis_url), locked):
        await wait_status(db_url, pid, "monitoring")
        await wait_oco(locked, db_url, pid, "0.5")
        first = {o["clientOrderId"] for o in resting(locked)}
        locked.faults.push(Fault.insufficient_balance())  # the next order sent: the exit
        await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
        await eventually(lambda: legs(db_url, pid).get("exit") == ["failed"], 15)
        await wait_status(db_url, pid, "monitoring")
        await wait_oco(locked, db_url, pid, "0.5")
    assert {o["clientOrderId"] for o in resting(locked)}.isdisjoint(first)
    assert legs(db_url, pid) == {
        "entry": ["filled"],
        "stop_loss": ["cancelled", "submitted"],
        "take_profit": ["cancelled", "submitted"],
        "exit": ["failed"],
    }
    assert len(locked.requests_to("POST", OCO)) == 2
    assert rejections(locked) == []
    for order in orders(db_url, pid):  # each sent once; on the exchange unless refused
        cid = order["client_order_id"]
        assert locked.posted_client_ids().count(cid) == 1, cid
        assert locked.order_count(cid) == (0 if order["status"] == "failed" else 1), cid


@pytest.mark.parametrize(
    "fault",
    [
        Fault.drop_after_apply(path=OCO),
        Fault.drop_after_apply(path=OCO, lookups=2),
        Fault.drop_before_apply(path=OCO),
        Fault.server_error(path=OCO),
    ],
    ids=["dropped-after-apply", "invisible-for-2-lookups", "dropped-before-apply", "503"],
)
async def test_an_oco_with_an_unknown_outcome_is_reconciled_to_one_list(
    db_url: str, redis_url: str, locked: FakeBinance, fault: Fault
) -> None:
    locked.faults.push(fault)
    pid = protected_position(db_url)
    async with live_worker(exec_settings(db_url, redis_url), locked):
        await wait_status(db_url, pid, "monitoring")
        await wait_oco(locked, db_url, pid, "0.5")
    assert len(locked.faults) == 0
    for order in orders(db_url, pid):
        assert locked.order_count(order["client_order_id"]) == 1
    assert len({o["orderListId"] for o in resting(locked)}) == 1
    assert rejections(locked) == []
