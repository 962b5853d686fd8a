"""Protection on Binance (the fake on loopback): stop-loss and take-profit orders are put
back whenever a held position lost them (an exit that failed, an order cancelled or expired
on the exchange, an exit refused before it was sent), sized by what is held, one live order
per kind; and a reconciliation pass writes nothing while nothing changes."""

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
    wait_status,
)
from tests.pipeline_support import eventually, stream_entries
from worker.app import App
from worker.testing.fake_binance import FakeBinance, Fault

pytestmark = pytest.mark.anyio
D = Decimal
ORDER = "/api/v3/order"
LIVE = ("created", "submitted", "partially_filled")
PROTECTIVE = ("stop_loss", "take_profit")
NOTIFICATIONS = "positions:notifications"


def protected_position(db_url: str, **columns: Any) -> uuid.UUID:
    """A long BTCUSDT 0.5 @ 100 with a stop-loss at 90 and a take-profit at 130."""
    values = {"quantity": D("0.5"), "stop_loss_price": D("90"), "take_profit_price": D("130")}
    return new_position(db_url, is_paper_trade=False, **{**values, **columns})[1]


def resting(fake: FakeBinance) -> list[dict[str, Any]]:
    return [o for o in fake.orders() if o["status"] in ("NEW", "PARTIALLY_FILLED")]


def live_protection(db_url: str, pid: uuid.UUID) -> dict[str, list[dict[str, Any]]]:
    """The position's live protective orders in the database, by kind."""
    live = [o for o in orders(db_url, pid) if o["purpose"] in PROTECTIVE and o["status"] in LIVE]
    return {kind: [o for o in live if o["purpose"] == kind] for kind in PROTECTIVE}


def protected_by(fake: FakeBinance, db_url: str, pid: uuid.UUID, held: str) -> bool:
    """Exactly one live stop-loss and one take-profit, recorded as accepted by the exchange,
    each sized ``held``, and exactly those two resting on the exchange."""
    live = live_protection(db_url, pid)
    if any(len(kind) != 1 for kind in live.values()):
        return False
    ours = [o for kind in live.values() for o in kind]
    if any(o["status"] != "submitted" or o["quantity"] != D(held) for o in ours):
        return False
    on_exchange = {o["clientOrderId"]: D(o["origQty"]) for o in resting(fake)}
    return on_exchange == {o["client_order_id"]: D(held) for o in ours}


async def wait_protected(fake: FakeBinance, db_url: str, pid: uuid.UUID, held: str) -> None:
    await eventually(lambda: protected_by(fake, db_url, pid, held), 15)


def assert_sent_once(fake: FakeBinance, db_url: str, pid: uuid.UUID) -> None:
    """Every order sent exactly once, and on the exchange once (unless it was rejected)."""
    for order in orders(db_url, pid):
        cid = order["client_order_id"]
        assert fake.posted_client_ids().count(cid) == 1, cid
        assert fake.order_count(cid) == (0 if order["status"] == "failed" else 1), cid


def call_rows(db_url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        return conn.execute(sql, args).fetchall()


async def wait_passes(app: App, n: int) -> None:
    """Until ``n`` more reconciliation passes have completed (the watcher counts them)."""
    watcher = app.watcher
    assert watcher is not None
    target = watcher.passes + n
    await eventually(lambda: watcher.passes >= target, 15)


def exit_ended(db_url: str, pid: uuid.UUID) -> bool:
    ended = ("failed", "cancelled")
    return any(o["purpose"] == "exit" and o["status"] in ended for o in orders(db_url, pid))


# -- an exit that fails ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("liquidity", "held", "reason"),
    [
        (None, "0.5", "-2010"),  # rejected: insufficient balance
        ("0", "0.5", "exit order expired"),  # the market order expires with nothing filled
        ("0.2", "0.3", "exit order expired"),  # 0.2 sold, the rest expires
    ],
    ids=["rejected-2010", "expired-unfilled", "expired-partly-filled"],
)
async def test_an_exit_that_fails_puts_the_protection_back(
    db_url: str, redis_url: str, fake: FakeBinance, liquidity: str | None, held: str, reason: str
) -> None:
    """The exit cancels the stop-loss and take-profit first; when it then fails, the position
    goes back under management holding coins: both are placed again, sized by what is held,
    with new client order ids, and the critical "exit failed" notification goes out."""
    pid = protected_position(db_url)
    async with live_worker(exec_settings(db_url, redis_url), fake):
        await wait_status(db_url, pid, "monitoring")
        await wait_protected(fake, db_url, pid, "0.5")
        first = {o["clientOrderId"] for o in resting(fake)}
        if liquidity is None:
            fake.faults.push(Fault.insufficient_balance())  # the next order sent: the exit
        else:
            fake.set_liquidity("BTCUSDT", liquidity)
        await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
        await eventually(lambda: exit_ended(db_url, pid), 15)
        await wait_status(db_url, pid, "monitoring")
        await wait_protected(fake, db_url, pid, held)
    reopened = position(db_url, pid)
    assert reopened["held_quantity"] == D(held)
    assert reason in reopened["failure_reason"]
    assert {o["clientOrderId"] for o in resting(fake)}.isdisjoint(first)  # fresh ids
    by_purpose: dict[str, list[str]] = {}
    for order in orders(db_url, pid):
        by_purpose.setdefault(order["purpose"], []).append(order["status"])
    assert by_purpose == {
        "entry": ["filled"],
        "stop_loss": ["cancelled", "submitted"],
        "take_profit": ["cancelled", "submitted"],
        "exit": ["failed" if liquidity is None else "cancelled"],
    }
    stops = {o["purpose"]: o["stop_price"] for o in orders(db_url, pid) if o["status"] in LIVE}
    assert stops == {"stop_loss": D("90"), "take_profit": D("130")}
    critical = [
        n
        for n in stream_entries(redis_url, NOTIFICATIONS)
        if n["position_id"] == str(pid) and n["severity"] == "critical"
    ]
    assert [n["title"] for n in critical] == ["Exit failed: position still held"]
    assert_sent_once(fake, db_url, pid)


async def test_an_exit_refused_before_it_is_sent_puts_the_protection_back(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    """The protection is cancelled before the exit is planned; an exit the filters refuse
    (0.5 BTC at 5 USDT is below the 5 USDT minimum notional) must not leave it off."""
    pid = protected_position(db_url, stop_loss_price=None)  # a stop at 90 would fire at 5
    async with live_worker(exec_settings(db_url, redis_url), fake):
        await wait_status(db_url, pid, "monitoring")
        await eventually(lambda: len(resting(fake)) == 1, 10)
        [first] = resting(fake)
        fake.set_price("BTCUSDT", "5")
        await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
        await eventually(
            lambda: (
                [o["status"] for o in orders(db_url, pid) if o["purpose"] == "take_profit"]
                == ["cancelled", "submitted"]
            ),
            15,
        )
        await eventually(lambda: [o["clientOrderId"] for o in resting(fake)] != [], 10)
    [again] = resting(fake)
    assert again["clientOrderId"] != first["clientOrderId"]
    assert (again["type"], D(again["origQty"]), D(again["stopPrice"])) == (
        "TAKE_PROFIT",
        D("0.5"),
        D("130"),
    )
    assert position(db_url, pid)["status"] == "monitoring"
    [request] = call_rows(db_url, "SELECT * FROM position_requests WHERE position_id = %s", pid)
    assert request["status"] == "rejected" and "notional" in request["error"].lower()
    assert_sent_once(fake, db_url, pid)


# -- a protective order ended on the exchange -------------------------------------------------


@pytest.mark.parametrize("status", ["CANCELED", "EXPIRED"])
async def test_a_protective_order_ended_on_the_exchange_is_placed_again(
    db_url: str, redis_url: str, fake: FakeBinance, status: str
) -> None:
    pid = protected_position(db_url)
    async with live_worker(exec_settings(db_url, redis_url), fake):
        await wait_status(db_url, pid, "monitoring")
        await wait_protected(fake, db_url, pid, "0.5")
        [stop] = live_protection(db_url, pid)["stop_loss"]
        fake.end_order(stop["client_order_id"], status)  # the user, on Binance's site
        await eventually(
            lambda: (
                [o["status"] for o in orders(db_url, pid) if o["purpose"] == "stop_loss"]
                == ["cancelled", "submitted"]
            ),
            15,
        )
        await wait_protected(fake, db_url, pid, "0.5")
    ended, again = (o for o in orders(db_url, pid) if o["purpose"] == "stop_loss")
    assert ended["exchange_status"] == status
    assert again["client_order_id"] != ended["client_order_id"]
    assert (again["quantity"], again["stop_price"]) == (D("0.5"), D("90"))
    assert position(db_url, pid)["status"] == "monitoring"
    assert_sent_once(fake, db_url, pid)


# -- nothing placed for a closed position; scale-out resizes ---------------------------------


async def test_nothing_is_placed_again_for_a_closed_position(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    pid = protected_position(db_url)
    async with live_worker(exec_settings(db_url, redis_url), fake) as app:
        await wait_status(db_url, pid, "monitoring")
        await wait_protected(fake, db_url, pid, "0.5")
        fake.set_price("BTCUSDT", "110")
        await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
        await wait_status(db_url, pid, "closed")
        await eventually(lambda: all(o["status"] not in LIVE for o in orders(db_url, pid)), 10)
        before = len(fake.orders())
        await wait_passes(app, 3)
        assert len(fake.orders()) == before
    assert resting(fake) == []
    assert [(o["purpose"], o["status"]) for o in orders(db_url, pid)] == [
        ("entry", "filled"),
        ("stop_loss", "cancelled"),
        ("take_profit", "cancelled"),
        ("exit", "filled"),
    ]


async def test_a_partial_exit_leaves_protection_sized_to_what_remains(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    pid = protected_position(db_url)
    async with live_worker(exec_settings(db_url, redis_url), fake) as app:
        await wait_status(db_url, pid, "monitoring")
        await wait_protected(fake, db_url, pid, "0.5")
        await call_off_loop(db_url, "SELECT request_position_exit(%s, 0.2)", pid)
        await wait_protected(fake, db_url, pid, "0.3")
        await wait_passes(app, 2)  # and it stays so: nothing more placed
        assert protected_by(fake, db_url, pid, "0.3")
    scaled = position(db_url, pid)
    assert (scaled["status"], scaled["held_quantity"]) == ("monitoring", D("0.3"))
    assert [o["purpose"] for o in orders(db_url, pid)] == [
        "entry",
        "stop_loss",
        "take_profit",
        "scale_out",
        "stop_loss",
        "take_profit",
    ]
    assert len(fake.orders()) == 6
    assert_sent_once(fake, db_url, pid)


# -- reconciliation writes only what changed ---------------------------------------------------


def row_versions(db_url: str, pid: uuid.UUID) -> dict[str, Any]:
    """xmin and updated_at of the position and its orders, and the audit trail's length."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT 'position', xmin::text, updated_at FROM positions WHERE id = %(p)s "
            "UNION ALL SELECT client_order_id, xmin::text, updated_at FROM orders "
            "WHERE position_id = %(p)s",
            {"p": pid},
        ).fetchall()
        events = conn.execute(
            "SELECT count(*) FROM position_events WHERE position_id = %s", (pid,)
        ).fetchone()
    return {"rows": sorted(rows), "events": events[0] if events else None}


async def test_resting_protective_orders_cause_no_writes_over_reconcile_passes(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    """Every pass lists the account's open orders (the resting stop-loss and take-profit
    among them) instead of looking each up; as long as the exchange reports nothing new, no
    row of the position or its orders is rewritten."""
    pid = protected_position(db_url)
    async with live_worker(exec_settings(db_url, redis_url), fake) as app:
        await wait_status(db_url, pid, "monitoring")
        await wait_protected(fake, db_url, pid, "0.5")
        await eventually(
            lambda: all(
                o["exchange_status"] == "NEW"
                for kind in live_protection(db_url, pid).values()
                for o in kind
            ),
            10,
        )
        await wait_passes(app, 1)  # settle whatever pass was running
        before, lookups = row_versions(db_url, pid), len(fake.requests_to("GET", ORDER))
        listings = len(fake.requests_to("GET", "/api/v3/openOrders"))
        await wait_passes(app, 4)
        after = row_versions(db_url, pid)
    assert len(fake.requests_to("GET", "/api/v3/openOrders")) >= listings + 3  # every pass
    assert len(fake.requests_to("GET", ORDER)) == lookups  # listed open: never looked up
    assert after == before
