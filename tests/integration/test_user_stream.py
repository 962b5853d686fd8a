"""Fills pushed over the user data stream (the fake's WebSocket API) reach the database at
once, with the reconcile pass slowed to 30 s so that only the stream can have done it; the
stream reconnects after a dropped connection and catches up what it missed over REST,
every fill recorded exactly once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from decimal import Decimal
from typing import Any

import anyio
import pytest

from tests.execution_support import (
    KEY,
    SECRET,
    assert_matches_exchange,
    exec_settings,
    live_worker,
    new_position,
    orders,
    position,
    trades,
    wait_status,
)
from tests.pipeline_support import eventually
from tests.security.test_account_trading import (
    add_account,
    live_position,
    new_user,
    settings,
    worker,
)
from worker.app import App
from worker.exchanges.base import OrderRequest
from worker.exchanges.binance import BinanceClient
from worker.exchanges.user_stream import OrderUpdate, UserStream, parse_event
from worker.logs import get_logger
from worker.testing.fake_binance import FakeBinance

pytestmark = pytest.mark.anyio
D = Decimal
SLOW_RECONCILE = 30.0  # the safety net is there, but too slow to be what records the fill


def resting(fake: FakeBinance) -> list[dict[str, Any]]:
    return [o for o in fake.orders() if o["status"] in ("NEW", "PARTIALLY_FILLED")]


@asynccontextmanager
async def streaming_worker(db_url: str, redis_url: str, fake: FakeBinance) -> AsyncIterator[App]:
    settings = exec_settings(db_url, redis_url, reconcile_interval=SLOW_RECONCILE)
    async with live_worker(settings, fake, ws_api_url=fake.ws_api_url) as app:
        assert app.user_streams is not None
        streams = app.user_streams
        await eventually(lambda: streams.caught_up >= 1, 10)
        yield app


async def test_a_resting_entry_that_fills_is_recorded_from_the_stream(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    _, pid = new_position(db_url, quantity=D("0.5"), limit_price=D("95"), is_paper_trade=False)
    async with streaming_worker(db_url, redis_url, fake) as app:
        await eventually(lambda: len(resting(fake)) == 1, 10)
        await eventually(lambda: [o["status"] for o in orders(db_url, pid)] == ["submitted"], 10)
        fake.set_price("BTCUSDT", "95")
        started = time.monotonic()
        await eventually(lambda: len(trades(db_url, pid)) == 1, 3, interval=0.005)
        took = time.monotonic() - started
        await wait_status(db_url, pid, "open", "monitoring", timeout=3)
        assert app.watcher is not None and app.watcher.passes == 1  # the start-up pass only
        assert app.user_streams is not None and app.user_streams.recorded >= 1
    assert took < 1.0, f"{took:.3f} s from the fill to the database"
    opened = position(db_url, pid)
    assert (opened["entry_quantity"], opened["entry_price"]) == (D("0.5"), D("95"))
    assert_matches_exchange(db_url, fake, pid)


async def test_a_protective_stop_that_fires_closes_the_position_from_the_stream(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    _, pid = new_position(
        db_url,
        quantity=D("0.5"),
        is_paper_trade=False,
        stop_loss_price=D("80"),
        take_profit_price=D("130"),
    )
    async with streaming_worker(db_url, redis_url, fake):
        await wait_status(db_url, pid, "open", "monitoring", timeout=10)
        await eventually(lambda: len(resting(fake)) == 2, 10)  # the OCO's two legs
        fake.set_price("BTCUSDT", "79")
        await wait_status(db_url, pid, "closed", timeout=3)
    closed = position(db_url, pid)
    assert closed["close_reason"] == "stop_loss"
    assert closed["held_quantity"] == 0
    assert_matches_exchange(db_url, fake, pid)


async def test_after_a_dropped_connection_the_stream_catches_up_what_it_missed(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    """The fill's events are lost (a stream gap), then the connection drops: the new
    connection's catch-up (openOrders, then the order and its trades) records the fill,
    exactly once, long before the reconcile pass would."""
    _, pid = new_position(db_url, quantity=D("0.5"), limit_price=D("95"), is_paper_trade=False)
    async with streaming_worker(db_url, redis_url, fake) as app:
        streams = app.user_streams
        assert streams is not None
        await eventually(lambda: [o["status"] for o in orders(db_url, pid)] == ["submitted"], 10)
        fake.ws_api.lose_events(1_000)
        fake.set_price("BTCUSDT", "95")
        with anyio.move_on_after(0.5):  # nothing arrives: the gap
            await eventually(lambda: trades(db_url, pid), 1)
        assert trades(db_url, pid) == []
        fake.ws_api.lose_events(0)
        caught_up = streams.caught_up
        assert fake.ws_api.drop_connections() == 1
        await eventually(lambda: streams.caught_up > caught_up, 10)
        await eventually(lambda: len(trades(db_url, pid)) == 1, 5)
        await wait_status(db_url, pid, "open", "monitoring", timeout=5)
        assert streams.streams[None].subscriptions == 2
        assert app.watcher is not None and app.watcher.passes == 1
    assert fake.ws_api.connections == 2
    assert_matches_exchange(db_url, fake, pid)


async def test_with_fast_polling_too_each_fill_is_recorded_once(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    """The stream and a 0.2 s reconcile pass race for the same fills (several per order)."""
    fake.set_partial_fills(3)
    pids = [
        new_position(db_url, quantity=D("0.3"), limit_price=D("95"), is_paper_trade=False)[1]
        for _ in range(3)
    ]
    settings = exec_settings(db_url, redis_url)
    async with live_worker(settings, fake, ws_api_url=fake.ws_api_url):
        await eventually(lambda: len(resting(fake)) == 3, 10)
        fake.set_price("BTCUSDT", "95")
        for pid in pids:
            await wait_status(db_url, pid, "open", "monitoring", timeout=10)
    for pid in pids:
        assert len(trades(db_url, pid)) == 3
        assert_matches_exchange(db_url, fake, pid)


async def test_the_client_reconnects_and_resubscribes_on_its_own(fake: FakeBinance) -> None:
    """UserStream alone: each connection is subscribed and caught up before its updates."""
    seen: list[str] = []
    updates: list[OrderUpdate] = []
    async with BinanceClient(KEY, SECRET, base_url=fake.base_url) as client:
        stream = UserStream(
            fake.ws_api_url,
            client.credentials,
            timestamp=client.timestamp_ms,
            log=get_logger("test"),
        )

        async def on_update(update: OrderUpdate) -> None:
            seen.append(f"update {update.client_order_id} {update.execution}")
            updates.append(update)

        async def on_connected() -> None:
            seen.append("caught up")

        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.run, on_update, on_connected)
            await eventually(lambda: seen == ["caught up"], 5)
            await client.place_order(
                OrderRequest("BTCUSDT", "buy", "limit", "one", D("0.5"), price=D("95"))
            )
            fake.set_price("BTCUSDT", "95")
            await eventually(lambda: len(updates) == 2, 5)
            fake.ws_api.drop_connections()
            await eventually(lambda: seen.count("caught up") == 2, 5)
            fake.ws_api.server_shutdown()  # "serverShutdown": connect again
            await eventually(lambda: seen.count("caught up") == 3, 5)
            tg.cancel_scope.cancel()
    trade = updates[1]
    assert (trade.execution, trade.state.status, trade.state.executed_qty) == (
        "TRADE", "FILLED", D("0.5"),
    )  # fmt: skip
    [fill] = trade.state.fills
    assert (fill.price, fill.qty, fill.commission, fill.commission_asset) == (
        D("95"), D("0.5"), D("0.0475"), "USDT",
    )  # fmt: skip
    assert fill.trade_id == str(fake.trades()[0]["id"])
    assert stream.subscriptions == 3


async def test_a_connection_is_replaced_before_the_24_hour_limit(fake: FakeBinance) -> None:
    """web-socket-api.md: "A single connection to the API is only valid for 24 hours" (here
    scaled down to 0.3 s): a new one is opened, subscribed and caught up in time."""
    caught_up = 0

    async def on_connected() -> None:
        nonlocal caught_up
        caught_up += 1

    async def ignore(update: OrderUpdate) -> None:
        pass

    async with BinanceClient(KEY, SECRET, base_url=fake.base_url) as client:
        stream = UserStream(
            fake.ws_api_url,
            client.credentials,
            timestamp=client.timestamp_ms,
            log=get_logger("test"),
            connection_max_s=0.3,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.run, ignore, on_connected)
            await eventually(lambda: caught_up >= 3, 5)
            tg.cancel_scope.cancel()
    assert fake.ws_api.connections >= 3 and stream.subscriptions >= 3


def test_a_cancel_report_names_the_cancelled_order() -> None:
    """user-data-stream.md: ``C`` is "the ID of the order being canceled"."""
    event = {
        "e": "executionReport", "E": 2, "s": "BTCUSDT", "c": "web_123", "C": "pw-e1", "x":
        "CANCELED", "X": "CANCELED", "i": 7, "z": "0.1", "Z": "9.5", "t": -1, "l": "0",
        "L": "0", "n": "0", "N": None, "T": 1,
    }  # fmt: skip
    update = parse_event({"subscriptionId": 0, "event": event})
    assert isinstance(update, OrderUpdate)
    assert (update.client_order_id, update.state.status, update.state.fills) == (
        "pw-e1", "CANCELED", (),
    )  # fmt: skip
    assert update.state.executed_qty == D("0.1")
    with pytest.raises(ValueError):
        parse_event({"subscriptionId": 0, "event": {**event, "z": "x"}})
    assert parse_event({"event": {"e": "outboundAccountPosition"}}) is None


async def test_each_users_account_has_its_own_stream(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    """Users' accounts (the registry's clients: Ed25519 and RSA keys here) are followed from
    their client's first use; each fill lands on its own user's position, from its own
    account's stream, with the reconcile pass at 30 s."""
    users, accounts = [], []
    for name, kind in (("alice", "ed25519"), ("bob", "rsa")):
        acct = fake.add_account(name, key_type=kind)  # type: ignore[arg-type]
        user = new_user(db_url)
        assert acct.private_key_pem is not None
        accounts.append(
            add_account(db_url, user.user_id, "main", acct.api_key, acct.private_key_pem, kind)
        )
        users.append(user)
    base = settings(db_url, redis_url, fake)
    s = replace(base, execution=replace(base.execution, reconcile_interval=SLOW_RECONCILE))
    async with worker(s) as app:
        streams = app.user_streams
        assert streams is not None
        pids = [
            live_position(db_url, user, quantity=D("0.1"), limit_price=D("95")) for user in users
        ]
        await eventually(lambda: set(streams.streams) == set(accounts), 10)
        await eventually(lambda: len(resting(fake)) == 2, 10)
        await eventually(lambda: streams.caught_up >= 2, 10)
        fake.set_price("BTCUSDT", "95")
        for pid in pids:
            await wait_status(db_url, pid, "open", "monitoring", timeout=3)
        assert streams.recorded >= 2
        assert app.watcher is not None and app.watcher.passes == 1
    for pid, name in zip(pids, ("alice", "bob"), strict=True):
        [fill] = trades(db_url, pid)
        [on_exchange] = fake.trades(account=name)
        assert fill["binance_trade_id"] == str(on_exchange["id"])


async def test_with_the_stream_off_fills_come_from_the_reconcile_pass(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    """``binance.user_stream = false``: no connection to the WebSocket API at all."""
    _, pid = new_position(db_url, quantity=D("0.5"), limit_price=D("95"), is_paper_trade=False)
    base = exec_settings(db_url, redis_url)
    s = replace(base, binance=replace(base.binance, user_stream=False))
    async with live_worker(s, fake, ws_api_url=fake.ws_api_url) as app:
        assert app.user_streams is None
        await eventually(lambda: len(resting(fake)) == 1, 10)
        fake.set_price("BTCUSDT", "95")
        await wait_status(db_url, pid, "open", "monitoring", timeout=10)
    assert fake.ws_api.connections == 0
    assert_matches_exchange(db_url, fake, pid)
