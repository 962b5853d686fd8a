"""The worker acts only on order rows it wrote itself (the fake Binance on loopback).

Client order ids are made from the order row's own uuid, which only the worker draws, so
users choosing position ids (PostgREST lets them) cannot take another position's ids. A row
in ``orders`` the worker did not write (a user's record, a row written by hand, a forged
one) is never sent, cancelled, driven, counted in the figures, nor waited for: the rows
here are inserted as the database owner, as a DBA or a platform backend could."""

from __future__ import annotations

import uuid
from collections.abc import MutableMapping
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import structlog
from psycopg.rows import dict_row

from tests.execution_support import (
    call_off_loop,
    exec_settings,
    live_worker,
    orders,
    position,
    posts_by_client_id,
    trades,
    wait_held,
    wait_status,
)
from tests.pipeline_support import eventually
from tests.support import insert_position, seed_owner
from worker.app import App
from worker.db.queries import q
from worker.execution.client_ids import client_order_id, is_worker_order
from worker.testing.fake_binance import FakeBinance

pytestmark = pytest.mark.anyio
D = Decimal
FINAL = ("filled", "cancelled", "failed")
PURPOSES = ("entry", "exit", "scale_in", "scale_out", "stop_loss", "take_profit")


def foreign_order(
    db_url: str,
    pid: uuid.UUID,
    purpose: str,
    client_id: str | None,
    *,
    age_seconds: float = 0,
    request_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """An order row the worker did not write, status ``created``, ``age_seconds`` old."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        p = conn.execute("SELECT user_id, side FROM positions WHERE id = %s", (pid,)).fetchone()
        assert p is not None
        buys = (purpose in ("entry", "scale_in")) == (p[1] == "long")
        row = conn.execute(
            "INSERT INTO orders (position_id, user_id, client_order_id, symbol, side, type,"
            " quantity, status, purpose, request_id, created_at)"
            " VALUES (%s, %s, %s, 'BTCUSDT', %s, 'market', 0.5, 'created', %s, %s,"
            "         now() - make_interval(secs => %s))"
            " RETURNING id",
            (pid, p[0], client_id, "buy" if buys else "sell", purpose, request_id, age_seconds),
        ).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def order_status(db_url: str, order_id: uuid.UUID) -> str:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT status FROM orders WHERE id = %s", (order_id,)).fetchone()
    assert row is not None
    return str(row[0])


def mentioned(fake: FakeBinance, client_id: str) -> list[Any]:
    """Every request to the fake that named ``client_id`` (sent, looked up, cancelled)."""
    return [r for r in fake.requests if client_id in r.params.values()]


def own(db_url: str, pid: uuid.UUID) -> list[dict[str, Any]]:
    """The position's orders the worker wrote."""
    rows = orders(db_url, pid)
    return [o for o in rows if is_worker_order(o["id"], o["purpose"], o["client_order_id"])]


async def wait_passes(app: App, n: int) -> None:
    """Until ``n`` more reconciliation passes have completed."""
    watcher = app.watcher
    assert watcher is not None
    target = watcher.passes + n
    await eventually(lambda: watcher.passes >= target, 15)


def ignored(logs: list[MutableMapping[str, Any]]) -> set[tuple[str, str]]:
    return {
        (e["order_id"], e["position_id"]) for e in logs if e["event"] == "foreign_order_ignored"
    }


# -- ids: unique by construction ---------------------------------------------------------------


async def test_positions_sharing_an_id_prefix_both_trade_to_the_end(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    """User A creates a position whose id shares the first 24 hex digits of user B's (a user
    chooses ``positions.id`` on insert). Neither takes the other's client order ids: both
    enter, scale in and exit."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        victim = insert_position(conn, seed_owner(conn), is_paper_trade=False)
        chosen = uuid.UUID(hex=victim.hex[:24] + uuid.uuid4().hex[24:])
        attacker = insert_position(conn, seed_owner(conn), id=chosen, is_paper_trade=False)
    assert attacker.hex[:24] == victim.hex[:24]
    pids = (victim, attacker)
    async with live_worker(exec_settings(db_url, redis_url), fake):
        for pid in pids:
            await wait_status(db_url, pid, "monitoring")
        fake.set_price("BTCUSDT", "110")
        for pid in pids:
            await call_off_loop(db_url, "SELECT request_position_scale_in(%s, 0.5)", pid)
        for pid in pids:
            await wait_held(db_url, pid, "1")
        fake.set_price("BTCUSDT", "120")
        for pid in pids:
            await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
        for pid in pids:
            await wait_status(db_url, pid, "closed")
    ids: list[str] = []
    for pid in pids:
        rows = orders(db_url, pid)
        assert [(o["purpose"], o["status"]) for o in rows] == [
            ("entry", "filled"),
            ("scale_in", "filled"),
            ("exit", "filled"),
        ]
        assert all(is_worker_order(o["id"], o["purpose"], o["client_order_id"]) for o in rows)
        ids += [o["client_order_id"] for o in rows]
        closed = position(db_url, pid)
        assert (closed["entry_quantity"], closed["entry_price"]) == (D("1"), D("105"))
        assert (closed["exit_quantity"], closed["held_quantity"]) == (D("1"), 0)
    assert len(set(ids)) == 6
    assert posts_by_client_id(fake) == {cid: 1 for cid in ids}


# -- rows the worker did not write -------------------------------------------------------------


async def test_foreign_rows_are_never_sent_driven_or_counted(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    """A 'created' entry (with a fill of its own) on a new position and a 'created' exit on
    the open position, with client ids of the writer's choosing: the worker sends, looks
    up and cancels none of them, and the position's figures come from its own orders."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        pid = insert_position(conn, seed_owner(conn), is_paper_trade=False)
    entry_cid = f"pw-e{uuid.uuid4().hex}"  # shaped like the worker's, made for another row
    forged_entry = foreign_order(db_url, pid, "entry", entry_cid, age_seconds=60)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO trades (order_id, position_id, binance_trade_id, symbol, side, price,"
            " quantity, value, fee, fee_asset, fee_quote, executed_at)"
            " VALUES (%s, %s, '1', 'BTCUSDT', 'buy', 50, 2, 100, 0, 'USDT', 0, now())",
            (forged_entry, pid),
        )
    capture = structlog.testing.LogCapture()
    logs = capture.entries
    log = structlog.wrap_logger(None, processors=[capture])
    async with live_worker(exec_settings(db_url, redis_url), fake, log=log) as app:
        await wait_status(db_url, pid, "monitoring")
        exit_cid = "evil-exit-1"
        forged_exit = foreign_order(db_url, pid, "exit", exit_cid, age_seconds=60)
        await wait_passes(app, 2)  # the reconciler looked at orders in flight since
        assert position(db_url, pid)["status"] == "monitoring"
        fake.set_price("BTCUSDT", "120")
        await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
        await wait_status(db_url, pid, "closed")
        await wait_passes(app, 2)
    for cid in (entry_cid, exit_cid):
        assert mentioned(fake, cid) == [], cid
        assert fake.order_count(cid) == 0
    assert order_status(db_url, forged_entry) == "created"
    assert order_status(db_url, forged_exit) == "created"
    real = own(db_url, pid)
    assert [(o["purpose"], o["status"]) for o in real] == [("entry", "filled"), ("exit", "filled")]
    assert posts_by_client_id(fake) == {o["client_order_id"]: 1 for o in real}
    closed = position(db_url, pid)
    assert (closed["entry_quantity"], closed["entry_price"]) == (D("0.5"), D("100"))
    assert (closed["exit_quantity"], closed["exit_price"]) == (D("0.5"), D("120"))
    assert closed["held_quantity"] == 0
    assert closed["fees_paid"] == D("0.11")
    assert closed["realized_pnl"] == D("9.89")
    assert len(trades(db_url, pid)) == 3  # the real entry's and exit's, and the forged one
    assert {(str(forged_entry), str(pid)), (str(forged_exit), str(pid))} <= ignored(logs)


async def test_exit_while_entering_cancels_the_real_entry_not_a_foreign_one(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    """A limit entry rests; an older foreign 'created' entry (a user's record, no client id)
    sits on the same position. The exit cancels the real entry on the exchange: the position
    fails because that entry was cancelled with nothing filled, not because an entry was
    "cancelled before it was sent"; the foreign row is left as it is."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        pid = insert_position(conn, seed_owner(conn), limit_price=D("95"), is_paper_trade=False)
    async with live_worker(exec_settings(db_url, redis_url), fake):
        await eventually(lambda: [o["status"] for o in own(db_url, pid)] == ["submitted"], 10)
        foreign = foreign_order(db_url, pid, "entry", None, age_seconds=3600)
        await call_off_loop(db_url, "SELECT request_position_exit(%s)", pid)
        await wait_status(db_url, pid, "failed")
        await eventually(lambda: all(o["status"] in FINAL for o in own(db_url, pid)), 10)
    failed = position(db_url, pid)
    assert "canceled with nothing filled" in failed["failure_reason"]
    [entry] = own(db_url, pid)
    assert (entry["status"], entry["exchange_status"]) == ("cancelled", "CANCELED")
    assert [o for o in fake.orders() if o["status"] in ("NEW", "PARTIALLY_FILLED")] == []
    assert order_status(db_url, foreign) == "created"


async def test_a_foreign_exit_never_stands_for_a_change_of_the_holding(
    db_url: str, redis_url: str, fake: FakeBinance
) -> None:
    """A foreign 'created' exit (no client id), newer than the position's stop-loss and
    take-profit: the protection resting for the holding stays as it is (no second list
    placed, nothing cancelled), and when the user cancels it on the exchange it is put
    back once."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        pid = insert_position(
            conn,
            seed_owner(conn),
            is_paper_trade=False,
            stop_loss_price=D("90"),
            take_profit_price=D("130"),
        )

    def working() -> list[str]:
        return sorted(o["clientOrderId"] for o in fake.orders() if o["status"] == "NEW")

    async with live_worker(exec_settings(db_url, redis_url), fake) as app:
        await wait_status(db_url, pid, "monitoring")
        first = await eventually(lambda: len(working()) == 2 and working(), 10)
        foreign = foreign_order(db_url, pid, "exit", None)
        await wait_passes(app, 3)
        assert working() == first
        assert len(posts_by_client_id(fake)) == 3  # the entry and one OCO list
        fake.end_order(first[0], "CANCELED")  # the user, on Binance's site: ends the list
        await eventually(lambda: len(working()) == 2 and not set(working()) & set(first), 15)
        await wait_passes(app, 2)
    protective = [o for o in own(db_url, pid) if o["purpose"] in ("stop_loss", "take_profit")]
    assert sorted(o["status"] for o in protective) == [
        "cancelled",
        "cancelled",
        "submitted",
        "submitted",
    ]
    assert posts_by_client_id(fake) == {o["client_order_id"]: 1 for o in own(db_url, pid)}
    assert position(db_url, pid)["status"] == "monitoring"
    assert order_status(db_url, foreign) == "created"


# -- the queries: SQL and Python agree on what is the worker's ---------------------------------


def test_the_queries_read_only_the_workers_own_orders(db_url: str) -> None:
    """``exec_*`` queries keep exactly the rows ``client_ids.is_worker_order`` accepts."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        owner = seed_owner(conn)
        pid = insert_position(conn, owner, is_paper_trade=False)
        row = conn.execute(
            "INSERT INTO position_requests (position_id, user_id, kind, reason)"
            " VALUES (%s, %s, 'exit', 'user') RETURNING id",
            (pid, owner.user_id),
        ).fetchone()
        assert row is not None
        request_id = row[0]
        mine = {uuid.uuid4(): p for p in PURPOSES}
        for order_id, purpose in mine.items():
            _insert(conn, pid, owner.user_id, order_id, purpose, client_order_id(order_id, purpose))
            conn.execute("UPDATE orders SET status = 'cancelled' WHERE id = %s", (order_id,))
        wrong = uuid.uuid4()  # the worker's id for this row, but for another purpose
        forged: dict[uuid.UUID, tuple[str, str | None]] = {
            uuid.uuid4(): ("entry", None),  # a user's record
            uuid.uuid4(): ("entry", client_order_id(uuid.uuid4(), "entry")),  # another row's
            uuid.uuid4(): ("exit", f"pw-{pid.hex[:24]}-x1"),  # made from the position
            wrong: ("exit", client_order_id(wrong, "entry")),
        }
        for order_id, (purpose, cid) in forged.items():
            _insert(conn, pid, owner.user_id, order_id, purpose, cid, request_id=request_id)
        for order_id in (next(iter(mine)), next(iter(forged))):
            conn.execute(
                "INSERT INTO trades (order_id, position_id, binance_trade_id, symbol, side,"
                " price, quantity, value, executed_at)"
                " VALUES (%s, %s, '1', 'BTCUSDT', 'buy', 50, 2, 100, now())",
                (order_id, pid),
            )

        def rows(name: str, **params: Any) -> list[dict[str, Any]]:
            return conn.cursor(row_factory=dict_row).execute(q(name), params).fetchall()

        def ids(name: str, **params: Any) -> set[uuid.UUID]:
            return {r["id"] for r in rows(name, **params)}

        every = conn.cursor(row_factory=dict_row).execute(
            "SELECT id, purpose, client_order_id FROM orders WHERE position_id = %s", (pid,)
        )
        by_python = {
            r["id"] for r in every if is_worker_order(r["id"], r["purpose"], r["client_order_id"])
        }
        assert by_python == set(mine)
        assert ids("exec_orders_of_position", position_id=pid) == set(mine)
        assert ids("exec_foreign_orders_of_position", position_id=pid) == set(forged)
        # the worker's own orders are all final: the foreign ones in flight are not its own
        assert rows("exec_orders_in_flight", grace=0) == []
        assert ids("exec_stuck_positions", grace=0) == {pid}
        assert ids("exec_order_of_request", request_id=request_id) == set()
        assert rows("exec_pending_requests", grace=0) == [{"position_id": pid, "id": request_id}]
        [fill] = rows("exec_fills_of_position", position_id=pid)
        assert fill["order_purpose"] == mine[next(iter(mine))]


def _insert(
    conn: psycopg.Connection[Any],
    pid: uuid.UUID,
    user_id: uuid.UUID,
    order_id: uuid.UUID,
    purpose: str,
    client_id: str | None,
    request_id: uuid.UUID | None = None,
) -> None:
    conn.execute(
        "INSERT INTO orders (id, position_id, user_id, client_order_id, symbol, side, type,"
        " quantity, status, purpose, request_id)"
        " VALUES (%s, %s, %s, %s, 'BTCUSDT', 'buy', 'market', 0.5, 'created', %s, %s)",
        (order_id, pid, user_id, client_id, purpose, request_id),
    )
