"""Protection under the exchange's caps on open orders, against the fake Binance at its real
defaults: filters.md MAX_NUM_ALGO_ORDERS 5 and MAX_NUM_ORDER_LISTS 20 per symbol and account
(not the shared ``fake`` fixture, which raises the algo cap to 200).

A protected position's OCO takes two algo slots (STOP_LOSS + TAKE_PROFIT), or one when its
take-profit leg rests as LIMIT_MAKER (not an algo order). Where the exchange has no room the
position is protected from the worker's side, visibly: ``positions.protection``, a
``protection.worker`` event on the events stream and a notification; a crossed level is a
market exit; a slot freed moves the protection back to the exchange.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.execution_support import (
    KEY,
    SECRET,
    call_off_loop,
    exec_settings,
    live_worker,
    new_position,
    orders,
    position,
    wait_status,
)
from tests.pipeline_support import eventually, stream_entries
from worker.exchanges.base import OrderRequest
from worker.exchanges.binance import BinanceClient
from worker.testing.fake_binance import FakeBinance

pytestmark = pytest.mark.anyio
D = Decimal
OCO = "/api/v3/orderList/oco"
LIVE = ("created", "submitted", "partially_filled")
ALGO = ("STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT")


@pytest.fixture
def capped() -> Iterator[FakeBinance]:
    """The fake Binance with its default filters (MAX_NUM_ALGO_ORDERS 5), BTCUSDT at 100."""
    with FakeBinance(api_key=KEY, api_secret=SECRET) as server:
        server.set_price("BTCUSDT", "100")
        server.set_commission("0.001", "quote")
        yield server
        server.release_hung()


def open_algo(fake: FakeBinance) -> int:
    return sum(1 for o in fake.orders() if o["status"] == "NEW" and o["type"] in ALGO)


def protected(db_url: str, pid: uuid.UUID) -> str | None:
    row = position(db_url, pid)
    return str(row["protection"]) if row["status"] == "monitoring" and row["protection"] else None


async def open_protected(db_url: str, stop: str = "90", take: str = "130") -> uuid.UUID:
    """A long 0.5 BTC with a stop and a take-profit, once its protection is decided."""
    _, pid = new_position(
        db_url,
        quantity=D("0.5"),
        is_paper_trade=False,
        stop_loss_price=D(stop),
        take_profit_price=D(take),
    )
    await eventually(lambda: protected(db_url, pid), 20)
    return pid


def live_protective(db_url: str, pid: uuid.UUID) -> list[dict[str, Any]]:
    return [
        o
        for o in orders(db_url, pid)
        if o["purpose"] in ("stop_loss", "take_profit") and o["status"] in LIVE
    ]


def notifications(redis_url: str) -> list[dict[str, str]]:
    return stream_entries(redis_url, "positions:notifications")


async def test_protection_goes_worker_side_when_the_exchange_is_full_and_comes_back(
    db_url: str, redis_url: str, capped: FakeBinance
) -> None:
    settings = exec_settings(db_url, redis_url)
    async with live_worker(settings, capped):
        first = [await open_protected(db_url) for _ in range(3)]
        soon_out = await open_protected(db_url, stop="95")  # exited by the worker below
        waiting = await open_protected(db_url)  # moves to the exchange once a slot frees

        # 2 + 2 algo slots, then one OCO with a LIMIT_MAKER take-profit (1 slot): 5 of 5
        assert [protected(db_url, p) for p in first] == ["exchange"] * 3
        assert [protected(db_url, p) for p in (soon_out, waiting)] == ["worker"] * 2
        assert open_algo(capped) == 5
        posts = capped.requests_to("POST", OCO)
        assert [p.params["aboveType"] for p in posts] == [
            "TAKE_PROFIT",
            "TAKE_PROFIT",
            "LIMIT_MAKER",
        ]
        assert D(posts[2].params["abovePrice"]) == D("130")
        assert [r.status for r in posts] == [200, 200, 200]  # counted: never refused
        # visible: on the position, in the events stream, in a notification
        row = position(db_url, waiting)
        assert "MAX_NUM_ALGO_ORDERS" in row["protection_reason"]
        assert live_protective(db_url, waiting) == []
        await eventually(
            lambda: {e["position_id"] for e in stream_entries(redis_url)
                     if e["type"] == "protection.worker"} == {str(soon_out), str(waiting)},
            10,
        )  # fmt: skip
        worker_notes = await eventually(
            lambda: [n for n in notifications(redis_url) if n["type"] == "protection.worker"], 10
        )
        assert {n["position_id"] for n in worker_notes} == {str(soon_out), str(waiting)}
        assert {n["severity"] for n in worker_notes} == {"warning"}

        # a worker-protected position whose stop is crossed is exited by a market order
        capped.set_price("BTCUSDT", "94")
        await wait_status(db_url, soon_out, "closed")
        closed = position(db_url, soon_out)
        assert (closed["close_reason"], closed["exit_price"]) == ("stop_loss", D("94"))
        assert [(o["purpose"], o["type"]) for o in orders(db_url, soon_out)] == [
            ("entry", "market"),
            ("exit", "market"),
        ]
        assert [protected(db_url, p) for p in first] == ["exchange"] * 3  # stops at 90 rest

        # closing an exchange-protected one frees two slots: the waiting one moves back
        await call_off_loop(db_url, "SELECT request_position_exit(%s)", first[0])
        await wait_status(db_url, first[0], "closed")
        await eventually(lambda: protected(db_url, waiting) == "exchange", 20)
        legs = live_protective(db_url, waiting)
        assert sorted(o["status"] for o in legs) == ["submitted", "submitted"]
        await eventually(
            lambda: [n for n in notifications(redis_url)
                     if n["type"] == "protection.exchange"
                     and n["position_id"] == str(waiting)],
            10,
        )  # fmt: skip
    assert open_algo(capped) <= 5


async def test_an_oco_refused_for_want_of_room_is_protected_by_the_worker(
    db_url: str, redis_url: str, capped: FakeBinance
) -> None:
    """Orders the worker does not count (the user's own) fill the cap: the exchange refuses
    the OCO with "Filter failure: MAX_NUM_ALGO_ORDERS". The legs are not placed (never a
    failed leg left silently), the position is worker-protected, and no more OCOs are
    sent while nothing frees up."""
    async with BinanceClient(KEY, SECRET, base_url=capped.base_url, timeout_s=2.0) as client:
        for n in range(2):  # two stop orders of the user's own, outside the worker
            await client.place_order(
                OrderRequest(
                    "BTCUSDT", "sell", "stop_loss", f"mine-{n}", D("0.1"), stop_price=D("50")
                )
            )
    async with live_worker(exec_settings(db_url, redis_url), capped) as app:
        first = await open_protected(db_url)
        second = await open_protected(db_url)
        assert protected(db_url, first) == "exchange"
        assert protected(db_url, second) == "worker"
        refused = [r for r in capped.requests_to("POST", OCO) if r.status != 200]
        assert len(refused) == 1
        legs = [o for o in orders(db_url, second) if o["purpose"] != "entry"]
        assert sorted(o["status"] for o in legs) == ["cancelled", "cancelled"]
        assert all("MAX_NUM_ALGO_ORDERS" in o["error_message"] for o in legs)
        assert "MAX_NUM_ALGO_ORDERS" in position(db_url, second)["protection_reason"]
        assert app.watcher is not None
        start = app.watcher.passes
        await eventually(lambda: app.watcher is not None and app.watcher.passes > start + 5, 10)
        assert len(capped.requests_to("POST", OCO)) == 2  # learnt: not tried again
        assert protected(db_url, second) == "worker"
