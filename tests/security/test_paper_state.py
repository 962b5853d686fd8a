"""Paper balances and paper orders (schema 0014), on both database shapes: a user reads their
own rows and nobody else's, anon reads nothing, and no API role writes them in any way
(they are the worker's: a user who could credit their own paper USDT would fake results)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import psycopg
import pytest

from tests.support import Owner, act_as, seed_owner

Conn = psycopg.Connection[Any]
D = Decimal
TABLES = ("paper_balances", "paper_orders")


def _paper_state(conn: Conn, owner: Owner, cid: str) -> None:
    """A balance and a resting order for ``owner``, written as the worker writes them."""
    conn.execute(
        "INSERT INTO paper_balances (user_id, asset, free, locked) VALUES (%s, 'USDT', 9000, 95)",
        (owner.user_id,),
    )
    conn.execute(
        "INSERT INTO paper_orders (id, user_id, symbol, client_order_id, side, type, quantity,"
        " price, status, triggered, hold_asset, locked, time_ms)"
        " VALUES (%s, %s, 'BTCUSDT', %s, 'buy', 'limit', 1, 95, 'NEW', true, 'USDT', 95, 0)",
        (f"P-{cid}", owner.user_id, cid),
    )


def _outcome(conn: Conn, sql: str, *args: Any) -> str:
    try:
        with conn.transaction():
            cur = conn.execute(sql, args)
            return f"rows={cur.rowcount}"
    except psycopg.Error as exc:
        return f"{exc.sqlstate}: {exc.diag.message_primary}"


def _everything(conn: Conn) -> list[Any]:
    return [
        row
        for table in TABLES
        for row in conn.execute(f"SELECT '{table}', t::text FROM {table} t ORDER BY 2").fetchall()
    ]


@pytest.fixture
def two_users(owner_conn: Conn) -> tuple[Owner, Owner]:
    a, b = seed_owner(owner_conn), seed_owner(owner_conn)
    _paper_state(owner_conn, a, "a1")
    _paper_state(owner_conn, b, "b1")
    return a, b


def test_a_user_reads_only_their_own_paper_state(
    db_url: str, two_users: tuple[Owner, Owner]
) -> None:
    a, _ = two_users
    with psycopg.connect(db_url, autocommit=True) as conn:
        act_as(conn, a.user_id)
        seen_balances = conn.execute("SELECT user_id, asset, free FROM paper_balances").fetchall()
        seen_orders = conn.execute("SELECT user_id, client_order_id FROM paper_orders").fetchall()
    assert seen_balances == [(a.user_id, "USDT", D(9000))]
    assert seen_orders == [(a.user_id, "a1")]


@pytest.mark.parametrize("claims", ["A", "none"])
def test_anon_reads_no_paper_state(
    db_url: str, two_users: tuple[Owner, Owner], claims: str
) -> None:
    a, _ = two_users
    with psycopg.connect(db_url, autocommit=True) as conn:
        act_as(conn, a.user_id if claims == "A" else None, role="anon")
        outcomes = {t: _outcome(conn, f"SELECT * FROM {t}") for t in TABLES}
    assert outcomes == {t: f"42501: permission denied for table {t}" for t in TABLES}


@pytest.mark.parametrize("role", ["authenticated", "anon"])
def test_no_api_role_writes_paper_state(
    db_url: str, owner_conn: Conn, two_users: tuple[Owner, Owner], role: str
) -> None:
    a, b = two_users
    before = _everything(owner_conn)
    attacks = [
        ("paper_balances", "UPDATE paper_balances SET free = free + 1000000"),
        ("paper_balances", "DELETE FROM paper_balances"),
        (
            "paper_balances",
            "INSERT INTO paper_balances (user_id, asset, free) VALUES (%s, 'BTC', 100)",
        ),
        ("paper_orders", "UPDATE paper_orders SET status = 'FILLED'"),
        ("paper_orders", "DELETE FROM paper_orders"),
        ("paper_balances", "TRUNCATE paper_balances CASCADE"),
        ("paper_orders", "TRUNCATE paper_orders CASCADE"),
    ]
    with psycopg.connect(db_url, autocommit=True) as conn:
        act_as(conn, a.user_id, role=role)
        for table, sql in attacks:
            args = (a.user_id,) if "%s" in sql else ()
            assert _outcome(conn, sql, *args) == f"42501: permission denied for table {table}"
    assert _everything(owner_conn) == before
    assert b.user_id != a.user_id
