"""Paper balances are locked in one order by every transaction (worker/db/paper.sql), so two
workers' placements and matching passes never deadlock on them.

Each case holds the account's sorted-last balance row from one connection, starts the
statement under test on a second (it waits for that row), and then asks a third for the
sorted-first row with NOWAIT: the statement must already hold it. The rows are inserted in
the opposite order, so a statement that locked them where their versions lie in the table
(as an ``UPDATE ... FROM unnest(...)`` does under a sequential scan) would wait for the last
row before taking the first; two such transactions each holding one row deadlock, and
PostgreSQL breaks that only after ``deadlock_timeout`` (1 s by default). Seen in the
bench's request flood: four of one account's scale-ins placed at once.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.support import seed_owner
from tests.waits import wait_until
from worker.db.paper_store import PgPaperStore
from worker.db.queries import q

pytestmark = pytest.mark.anyio
D = Decimal


def two_users(db_url: str) -> list[str]:
    """Two accounts, sorted, each with a USDT row inserted before its BTC row (sorted
    first): both accounts' rows lie in the table against their sorted order."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        users = sorted(str(seed_owner(conn).user_id) for _ in range(2))
        for user in reversed(users):
            for asset in ("USDT", "BTC"):
                conn.execute(
                    "INSERT INTO paper_balances (user_id, asset, free) VALUES (%s, %s, 100)",
                    (user, asset),
                )
    return users


@contextmanager
def holding(db_url: str, user: str, asset: str) -> Iterator[None]:
    """Hold one balance row's lock until the block ends."""
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "SELECT 1 FROM paper_balances WHERE user_id = %s AND asset = %s FOR NO KEY UPDATE",
            (user, asset),
        )
        yield
        conn.rollback()


def held_by_another(db_url: str, user: str, asset: str) -> bool:
    """Whether another transaction holds the row (asked with NOWAIT)."""
    with psycopg.connect(db_url) as conn:
        try:
            conn.execute(
                "SELECT 1 FROM paper_balances WHERE user_id = %s AND asset = %s"
                " FOR NO KEY UPDATE NOWAIT",
                (user, asset),
            )
        except psycopg.errors.LockNotAvailable:
            return True
        finally:
            conn.rollback()
        return False


def waiting_on_a_lock(db_url: str, pid: int) -> bool:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
    return row is not None and row[0] == "Lock"


def locks_first_row_first(
    db_url: str, last: tuple[str, str], first: tuple[str, str], run: Callable[[Any], None]
) -> bool:
    """Run ``run(conn)`` in a transaction while ``last`` is held elsewhere; once it waits,
    whether it holds ``first`` already. Its transaction is rolled back."""
    errors: list[BaseException] = []
    with psycopg.connect(db_url) as conn:
        pid = conn.info.backend_pid

        def statement() -> None:
            try:
                run(conn)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        with holding(db_url, *last):
            thread = threading.Thread(target=statement)
            thread.start()
            wait_until(lambda: waiting_on_a_lock(db_url, pid) or errors, timeout=10)
            held = held_by_another(db_url, *first)
        thread.join(10)
        conn.rollback()
    assert not errors, errors
    return held


# the planner's choice, and a plan that reads the table first, by a sequential scan (what
# it may choose for a small table, or once its statistics say so)
PLANS = {
    "chosen": "",
    "scan": "SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off;"
    " SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off",
}


@pytest.mark.parametrize("plan", PLANS)
def test_one_accounts_change_locks_its_assets_in_order(db_url: str, plan: str) -> None:
    user = two_users(db_url)[0]
    params = {
        "user_ids": [user, user],
        "assets": ["BTC", "USDT"],
        "free": [D(1), D(-1)],
        "locked": [D(0), D(0)],
    }

    def change(conn: Any) -> None:
        if PLANS[plan]:
            conn.execute(PLANS[plan])
        conn.execute(q("paper_change_balances"), params)

    assert locks_first_row_first(db_url, (user, "USDT"), (user, "BTC"), change)


@pytest.mark.parametrize("plan", PLANS)
def test_many_accounts_change_locks_accounts_and_assets_in_order(db_url: str, plan: str) -> None:
    first, second = two_users(db_url)
    params = {
        "user_ids": [first, first, second, second],
        "assets": ["BTC", "USDT", "BTC", "USDT"],
        "free": [D(1), D(-1), D(1), D(-1)],
        "locked": [D(0)] * 4,
    }

    def change(conn: Any) -> None:
        if PLANS[plan]:
            conn.execute(PLANS[plan])
        conn.execute(q("paper_change_balances"), params)

    # the other account's row, and the same account's other asset
    assert locks_first_row_first(db_url, (second, "BTC"), (first, "USDT"), change)
    assert locks_first_row_first(db_url, (first, "USDT"), (first, "BTC"), change)


async def test_a_matching_pass_holds_its_owners_balances_before_saving_any(db_url: str) -> None:
    """A pass saves its orders one by one, in the book's order, each changing its owner's
    balances: it locks every owner's rows first, in order, so that a placement of those
    accounts (which locks in the same order) never holds one of them while waiting for
    another the pass holds."""
    users = two_users(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        for seq_first in reversed(users):  # the later account's order is the oldest
            conn.execute(
                "INSERT INTO paper_orders (id, user_id, symbol, client_order_id, side, type,"
                " quantity, price, status, triggered, hold_asset, locked, time_ms)"
                " VALUES (%s, %s, 'BTCUSDT', %s, 'buy', 'limit', 1, 10, 'NEW', true,"
                " 'USDT', 10, 0)",
                (f"P{uuid.uuid4().hex[:24]}", seq_first, f"c-{uuid.uuid4().hex[:20]}"),
            )
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        db_url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
    )
    await pool.open()
    try:
        store = PgPaperStore(pool, {"USDT": D(100)})
        async with store.claim(None, "BTCUSDT") as claim:
            assert len(claim.orders) == 2
            for user in users:
                for asset in ("BTC", "USDT"):
                    assert held_by_another(db_url, user, asset), (user, asset)
    finally:
        await pool.close()
