"""A paper placement that PostgreSQL rolls back for a conflict is run again, and recorded once
(worker/db/paper_store.py, ``conflicts_retried``); a conflict is never taken for an outage.

The deadlock is a real one: another session holds the account's USDT row, the placement
takes its BTC row (sorted first) and waits for USDT, and the other session then asks for
BTC. The placement's backend, whose ``deadlock_timeout`` (1 s) runs out first, finds the
cycle and is the one rolled back (40P01; the manual, "Deadlocks" and "Serialization Failure
Handling": run the transaction again).
"""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import structlog
from psycopg_pool import AsyncConnectionPool

from tests.support import seed_owner, waiting_on_a_lock
from tests.waits import wait_until
from worker.db.paper_store import PgPaperStore
from worker.driver_errors import outage_of, translated_errors
from worker.errors import Conflict
from worker.exchanges.base import OrderRequest
from worker.exchanges.paper import PaperExchange
from worker.exchanges.paper_book import PaperConfig
from worker.exchanges.prices import FixedPrices

pytestmark = pytest.mark.anyio
D = Decimal
# paper_change_balances (worker/db/paper.sql) by its first line: pg_stat_activity keeps
# only the start of a statement (track_activity_query_size)
CHANGE = "-- Balance changes, one element per (account, asset)"


def new_user(db_url: str) -> str:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return str(seed_owner(conn).user_id)


def state_of(db_url: str, user: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The account's balances and its orders (client id, status, quantity), comparable
    across users."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        balances = conn.execute(
            "SELECT asset, free, locked FROM paper_balances WHERE user_id = %s ORDER BY asset",
            (user,),
        ).fetchall()
        orders = conn.execute(
            "SELECT client_order_id, status, quantity FROM paper_orders WHERE user_id = %s"
            " ORDER BY client_order_id",
            (user,),
        ).fetchall()
    return balances, orders


def buy(cid: str, qty: str) -> OrderRequest:
    return OrderRequest("BTCUSDT", "buy", "market", cid, D(qty))


async def test_a_placement_rolled_back_by_a_deadlock_is_run_again_and_recorded_once(
    db_url: str,
) -> None:
    feed = FixedPrices({"BTCUSDT": D("100")})
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        db_url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
    )
    await pool.open()
    conflicted, quiet = new_user(db_url), new_user(db_url)
    try:
        with structlog.testing.capture_logs() as logs:
            paper = PaperExchange(
                feed,
                clock=lambda: 1_760_000_000_000,
                config=PaperConfig(),
                store=PgPaperStore(pool, {"USDT": D("1000")}),
            )
            for user in (conflicted, quiet):  # both accounts now have a BTC and a USDT row
                await paper.for_account(user).place_order(buy("first", "1"))
            await paper.for_account(quiet).place_order(buy("second", "2"))

            with psycopg.connect(db_url) as other:
                other.execute("SET deadlock_timeout = '1min'")  # the placement finds the cycle
                lock = (
                    "SELECT 1 FROM paper_balances WHERE user_id = %s AND asset = %s"
                    " FOR NO KEY UPDATE"
                )
                other.execute(lock, (conflicted, "USDT"))
                errors: list[BaseException] = []

                def close_the_cycle() -> None:
                    try:
                        # the placement's change, waiting for the USDT row
                        wait_until(lambda: waiting_on_a_lock(db_url, CHANGE), timeout=10)
                        other.execute(lock, (conflicted, "BTC"))  # returns once it is broken
                    except BaseException as exc:  # pragma: no cover - reported below
                        errors.append(exc)
                    finally:
                        other.rollback()

                thread = threading.Thread(target=close_the_cycle)
                thread.start()
                try:
                    state = await paper.for_account(conflicted).place_order(buy("second", "2"))
                finally:
                    thread.join(10)
            assert not errors, errors
        assert state.status == "FILLED"
        retried = [e for e in logs if e["event"] == "paper_conflict_retried"]
        assert len(retried) == 1, logs
        assert "DeadlockDetected" in retried[0]["error"]
        assert not [e for e in logs if e["log_level"] == "error"]
        # recorded once: the same balances and orders as the account that met no conflict
        assert state_of(db_url, conflicted) == state_of(db_url, quiet)
        assert len(state_of(db_url, conflicted)[1]) == 2
    finally:
        await pool.close()


async def test_a_conflict_is_its_own_error_and_no_outage(db_url: str) -> None:
    """What :func:`translated_errors` makes of the server's deadlock error (SQLSTATE 40P01):
    a Conflict that names it, which ``outage_of`` does not take for an outage."""
    with pytest.raises(Conflict) as caught:
        async with translated_errors(), await psycopg.AsyncConnection.connect(db_url) as conn:
            # the server raises SQLSTATE 40P01, without needing a cycle
            await conn.execute(
                "DO $$ BEGIN RAISE EXCEPTION 'deadlock detected'"
                " USING ERRCODE = 'deadlock_detected'; END $$"
            )
    assert isinstance(caught.value.__cause__, psycopg.errors.DeadlockDetected)
    assert "deadlock detected" in str(caught.value)
    assert outage_of(caught.value) is None
