"""Row-level security and privileges, as Supabase's roles see them.

Two users, A and B, each with a trader, a signal, a position, an order, a trade and the audit
rows those wrote, all seeded as the owner. Then a second connection acts as ``authenticated``
with A's JWT claims (``tests.support.act_as``), as ``anon`` or as ``service_role``.

Every test runs on both database shapes (``db_shape``): a plain PostgreSQL and a
Supabase-shaped one, whose default privileges grant ALL on every new object to the API roles.

Outcomes are written as strings so a whole matrix compares at once: ``rows=N`` when a
statement ran, else ``SQLSTATE: message``. 42501 is both "permission denied" (no privilege)
and "violates row-level security policy" (a WITH CHECK failed); the messages tell them apart.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from tests.support import Owner, act_as, insert_position, seed_owner

Conn = psycopg.Connection[Any]

TABLES = ("positions", "orders", "trades", "position_events", "signals", "traders")
USER_UPDATABLE = {"stop_loss_price", "take_profit_price", "max_loss_usdt", "metadata"}


@pytest.fixture(params=["plain", "supabase"])
def db_shape(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def denied(table: str) -> str:
    return f"42501: permission denied for table {table}"


def violates(table: str, policy: str | None = None) -> str:
    name = f' "{policy}"' if policy else ""
    return f'42501: new row violates row-level security policy{name} for table "{table}"'


@dataclass(frozen=True)
class User:
    owner: Owner
    position_id: uuid.UUID
    order_id: uuid.UUID
    trade_id: uuid.UUID


@dataclass(frozen=True)
class World:
    a: User
    b: User
    # Every row id per table and user, as the owner sees them (RLS does not apply to it).
    ids: dict[str, dict[uuid.UUID, set[Any]]]


def _seed_user(conn: Conn) -> User:
    owner = seed_owner(conn)
    position_id = insert_position(conn, owner)
    conn.execute("UPDATE positions SET status = 'submitting' WHERE id = %s", (position_id,))
    order = conn.execute(
        "INSERT INTO orders (position_id, user_id, client_order_id, symbol, side, type, "
        "quantity, status) VALUES (%s, %s, %s, 'BTCUSDT', 'buy', 'market', 0.5, 'created') "
        "RETURNING id",
        (position_id, owner.user_id, f"pw-{uuid.uuid4().hex[:16]}"),
    ).fetchone()
    assert order is not None
    trade = conn.execute(
        "INSERT INTO trades (order_id, position_id, binance_trade_id, symbol, side, price, "
        "quantity, value, executed_at) VALUES (%s, %s, '1', 'BTCUSDT', 'buy', 27000, 0.5, "
        "13500, %s) RETURNING id",
        (order[0], position_id, datetime.fromisoformat("2025-11-04T12:00:00+00:00")),
    ).fetchone()
    assert trade is not None
    return User(owner, position_id, order[0], trade[0])


_IDS_BY_USER = {
    "positions": "SELECT id FROM positions WHERE user_id = %s",
    "orders": "SELECT id FROM orders WHERE user_id = %s",
    "trades": "SELECT t.id FROM trades t JOIN positions p ON p.id = t.position_id "
    "WHERE p.user_id = %s",
    "position_events": "SELECT id FROM position_events WHERE user_id = %s",
    "signals": "SELECT id FROM signals WHERE user_id = %s",
    "traders": "SELECT id FROM traders WHERE user_id = %s",
}


@pytest.fixture
def world(db_url: str) -> World:
    with psycopg.connect(db_url, autocommit=True) as conn:
        a, b = _seed_user(conn), _seed_user(conn)
        ids = {
            table: {
                u.owner.user_id: {r[0] for r in conn.execute(sql, (u.owner.user_id,))}
                for u in (a, b)
            }
            for table, sql in _IDS_BY_USER.items()
        }
    # One row of each per user, and 4 audit rows: position created, its move, order, trade.
    counts = {(t, u): len(rows) for t, by_user in ids.items() for u, rows in by_user.items()}
    assert set(counts.values()) == {1, 4}
    assert {key for key, n in counts.items() if n == 4} == {
        ("position_events", a.owner.user_id),
        ("position_events", b.owner.user_id),
    }
    return World(a, b, ids)


@pytest.fixture
def owner_conn(db_url: str) -> Iterator[Conn]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def as_a(db_url: str, world: World) -> Iterator[Conn]:
    """``authenticated`` with user A's JWT claims."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        act_as(conn, world.a.owner.user_id)
        yield conn


def _try(conn: Conn, sql: str, params: tuple[Any, ...] | None = None) -> str:
    """Run one statement in its own transaction; describe what happened."""
    try:
        with conn.transaction():
            cur = conn.execute(sql, params)
            return f"rows={cur.rowcount}"
    except psycopg.Error as exc:
        return f"{exc.sqlstate}: {exc.diag.message_primary}"


def _visible(conn: Conn) -> dict[str, set[Any]]:
    return {t: {r[0] for r in conn.execute(f"SELECT id FROM {t}")} for t in TABLES}


def _snapshot(owner_conn: Conn) -> list[tuple[Any, ...]]:
    """Every row of every table, to show that nothing changed."""
    rows: list[tuple[Any, ...]] = []
    for table in TABLES:
        rows += owner_conn.execute(
            f"SELECT '{table}', t::text FROM {table} t ORDER BY 2"
        ).fetchall()
    return rows


def _b_row(world: World, table: str) -> Any:
    """One of B's rows in ``table``."""
    return next(iter(world.ids[table][world.b.owner.user_id]))


def _a_row(world: World, table: str) -> Any:
    return next(iter(world.ids[table][world.a.owner.user_id]))


# auth.uid() -----------------------------------------------------------------------------------


def test_auth_uid_is_the_jwt_sub(db_url: str) -> None:
    sub = uuid.uuid4()
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("SELECT auth.uid()").fetchone() == (None,)
        act_as(conn, sub)
        assert conn.execute("SELECT current_user::text, auth.uid()").fetchone() == (
            "authenticated",
            sub,
        )
        conn.execute("SELECT set_config('request.jwt.claims', '', false)")
        assert conn.execute("SELECT auth.uid()").fetchone() == (None,)
        # The legacy per-claim setting that older PostgREST versions set.
        legacy = uuid.uuid4()
        conn.execute("SELECT set_config('request.jwt.claim.sub', %s, false)", (str(legacy),))
        assert conn.execute("SELECT auth.uid()").fetchone() == (legacy,)


# Seeing rows ----------------------------------------------------------------------------------


def test_user_sees_exactly_their_own_rows(world: World, as_a: Conn) -> None:
    a = world.a.owner.user_id
    assert _visible(as_a) == {t: world.ids[t][a] for t in TABLES}
    # Asking for B's rows by id finds nothing either.
    for table in TABLES:
        b_ids = list(world.ids[table][world.b.owner.user_id])
        row = as_a.execute(f"SELECT count(*) FROM {table} WHERE id = ANY(%s)", (b_ids,)).fetchone()
        assert row == (0,), table


def test_user_without_claims_sees_nothing(db_url: str, world: World) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        act_as(conn, None)
        assert _visible(conn) == {t: set() for t in TABLES}


@pytest.mark.parametrize("claims", ["A", "none"])
def test_anon_is_denied_everything(db_url: str, world: World, claims: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        act_as(conn, world.a.owner.user_id if claims == "A" else None, role="anon")
        for table in TABLES:
            assert _try(conn, f"SELECT * FROM {table}") == denied(table)
            assert _try(conn, f"DELETE FROM {table}") == denied(table)
        assert _try(conn, "UPDATE positions SET metadata = '{}'") == denied("positions")
        assert _try(
            conn,
            "INSERT INTO signals (user_id) VALUES (%s)",
            (world.a.owner.user_id,),
        ) == denied("signals")


def test_service_role_bypasses_rls(db_url: str, world: World) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        act_as(conn, world.a.owner.user_id, role="service_role")
        a, b = world.a.owner.user_id, world.b.owner.user_id
        assert _visible(conn) == {t: world.ids[t][a] | world.ids[t][b] for t in TABLES}
        # It may set any user's risk limits and create positions for them (the platform's
        # backend) ...
        b_position = world.b.position_id
        limits = "UPDATE positions SET stop_loss_price = 1, metadata = '{}' WHERE id = %s"
        assert _try(conn, limits, (b_position,)) == "rows=1"
        insert_position(conn, world.b.owner)
        # ... but never drive a position (the worker's job), write the exchange's record ...
        move = "UPDATE positions SET status = 'open' WHERE id = %s"
        assert _try(conn, move, (b_position,)) == denied("positions")
        held = "UPDATE positions SET held_quantity = 2 WHERE id = %s"
        assert _try(conn, held, (b_position,)) == denied("positions")
        assert _try(
            conn,
            "INSERT INTO orders (position_id, user_id, symbol, side, type, quantity, status) "
            "VALUES (%s, %s, 'BTCUSDT', 'buy', 'market', 30, 'created')",
            (b_position, world.b.owner.user_id),
        ) == denied("orders")
        assert _try(conn, "UPDATE orders SET status = 'cancelled'") == denied("orders")
        assert _try(conn, "DELETE FROM positions WHERE id = %s", (b_position,)) == denied(
            "positions"
        )
        # ... nor rewrite the audit trail.
        event = _b_row(world, "position_events")
        assert _try(
            conn, "UPDATE position_events SET new_status = 'x' WHERE id = %s", (event,)
        ) == denied("position_events")
        assert _try(conn, "UPDATE position_events SET processed_at = now()") == denied(
            "position_events"
        )
        assert _try(conn, "DELETE FROM position_events WHERE id = %s", (event,)) == denied(
            "position_events"
        )
        assert _try(conn, "DELETE FROM position_events") == denied("position_events")


# Changing B's rows ----------------------------------------------------------------------------


def test_user_cannot_update_other_users_rows(world: World, as_a: Conn, owner_conn: Conn) -> None:
    before = _snapshot(owner_conn)
    b = world.b
    outcomes = {
        "positions": _try(as_a, "UPDATE positions SET stop_loss_price = 1 WHERE id = %s",
                          (b.position_id,)),
        "positions (all)": _try(as_a, "UPDATE positions SET metadata = '{\"x\": 1}'"),
        "orders": _try(as_a, "UPDATE orders SET error_message = 'x' WHERE id = %s",
                       (b.order_id,)),
        "trades": _try(as_a, "UPDATE trades SET fee = 0 WHERE id = %s", (b.trade_id,)),
        "position_events": _try(as_a, "UPDATE position_events SET symbol = 'X' WHERE id = %s",
                                (_b_row(world, "position_events"),)),
        "signals": _try(as_a, "UPDATE signals SET status = 'cancelled' WHERE id = %s",
                        (b.owner.signal_id,)),
        "traders": _try(as_a, "UPDATE traders SET name = 'mine' WHERE id = %s",
                        (b.owner.trader_id,)),
    }  # fmt: skip
    assert outcomes == {
        "positions": "rows=0",  # filtered by RLS
        "positions (all)": "rows=1",  # A's own only
        "orders": denied("orders"),
        "trades": denied("trades"),
        "position_events": denied("position_events"),
        "signals": "rows=0",
        "traders": "rows=0",
    }
    after = _snapshot(owner_conn)
    changed = [row for row in after if row not in before]
    assert len(changed) == 1 and str(world.a.position_id) in changed[0][1]


def test_user_cannot_delete_other_users_rows(world: World, as_a: Conn, owner_conn: Conn) -> None:
    spare = as_a.execute(
        "INSERT INTO signals (user_id) VALUES (%s) RETURNING id::text", (world.a.owner.user_id,)
    ).fetchone()
    assert spare is not None
    before = _snapshot(owner_conn)
    outcomes = {
        t: _try(as_a, f"DELETE FROM {t} WHERE id = %s", (_b_row(world, t),)) for t in TABLES
    }
    assert outcomes == {
        "positions": denied("positions"),
        "orders": denied("orders"),
        "trades": denied("trades"),
        "position_events": denied("position_events"),
        "signals": "rows=0",
        "traders": "rows=0",
    }
    assert _snapshot(owner_conn) == before
    # "Every signal no position A can see uses" would include B's signal without RLS on
    # signals; with it, the delete reaches only A's own spare signal.
    unused = "DELETE FROM signals WHERE id NOT IN (SELECT signal_id FROM positions)"
    assert _try(as_a, unused) == "rows=1"
    assert _snapshot(owner_conn) == [row for row in before if spare[0] not in row[1]]


def test_user_cannot_delete_own_exchange_records(world: World, as_a: Conn) -> None:
    outcomes = {
        t: _try(as_a, f"DELETE FROM {t} WHERE id = %s", (_a_row(world, t),))
        for t in ("positions", "orders", "trades", "position_events")
    }
    assert outcomes == {t: denied(t) for t in outcomes}
    assert _try(as_a, "TRUNCATE positions CASCADE") == denied("positions")


def test_user_cannot_insert_rows_for_another_user(world: World, as_a: Conn) -> None:
    b = world.b.owner
    a = world.a.owner
    now = datetime.fromisoformat("2025-11-04T12:00:00+00:00")
    new_position = (
        "INSERT INTO positions (user_id, trader_id, signal_id, symbol, side, status) "
        "VALUES (%s, %s, %s, 'ETHUSDT', 'long', 'created')"
    )
    new_order = (
        "INSERT INTO orders (position_id, user_id, symbol, side, type, quantity, status) "
        "VALUES (%s, %s, 'BTCUSDT', 'sell', 'market', 0.1, 'created')"
    )
    outcomes = {
        "position for B": _try(as_a, new_position, (b.user_id, b.trader_id, b.signal_id)),
        "position on B's signal": _try(as_a, new_position, (a.user_id, a.trader_id, b.signal_id)),
        "position on B's trader": _try(as_a, new_position, (a.user_id, b.trader_id, a.signal_id)),
        "order for B": _try(as_a, new_order, (world.b.position_id, b.user_id)),
        "own order on B's position": _try(as_a, new_order, (world.b.position_id, a.user_id)),
        "order for B on A's position": _try(as_a, new_order, (world.a.position_id, b.user_id)),
        "trade": _try(
            as_a,
            "INSERT INTO trades (order_id, position_id, symbol, side, price, quantity, value, "
            "executed_at) VALUES (%s, %s, 'BTCUSDT', 'buy', 1, 1, 1, %s)",
            (world.a.order_id, world.a.position_id, now),
        ),
        "event": _try(
            as_a,
            "INSERT INTO position_events (kind, position_id, user_id, symbol, actor_role) "
            "VALUES ('position', %s, %s, 'BTCUSDT', 'forged')",
            (world.a.position_id, a.user_id),
        ),
        "signal for B": _try(as_a, "INSERT INTO signals (user_id) VALUES (%s)", (b.user_id,)),
        "trader for B": _try(as_a, "INSERT INTO traders (user_id) VALUES (%s)", (b.user_id,)),
    }
    assert outcomes == {
        "position for B": violates("positions"),
        "position on B's signal": violates("positions", "positions_insert_own_refs"),
        "position on B's trader": violates("positions", "positions_insert_own_refs"),
        # orders are the worker's alone (docs/security.md): no insert privilege at all
        "order for B": denied("orders"),
        "own order on B's position": denied("orders"),
        "order for B on A's position": denied("orders"),
        "trade": denied("trades"),
        "event": denied("position_events"),
        "signal for B": violates("signals"),
        "trader for B": violates("traders"),
    }
    assert _visible(as_a) == {t: world.ids[t][a.user_id] for t in TABLES}


# A's own rows ---------------------------------------------------------------------------------


def test_user_can_insert_and_see_their_own(world: World, as_a: Conn, db_url: str) -> None:
    a = world.a.owner
    position_id = insert_position(as_a, a, symbol="ETHUSDT")
    signal = as_a.execute(
        "INSERT INTO signals (user_id, symbol) VALUES (%s, 'SOLUSDT') RETURNING id", (a.user_id,)
    ).fetchone()
    trader = as_a.execute(
        "INSERT INTO traders (user_id, name) VALUES (%s, 'mine') RETURNING id", (a.user_id,)
    ).fetchone()
    assert signal is not None and trader is not None
    visible = _visible(as_a)
    assert visible["positions"] == world.ids["positions"][a.user_id] | {position_id}
    assert visible["orders"] == world.ids["orders"][a.user_id]
    assert {signal[0], a.signal_id} == visible["signals"]
    assert {trader[0], a.trader_id} == visible["traders"]
    # The audit trail recorded it, as A, and A can read it.
    rows = as_a.execute(
        "SELECT kind, new_status, actor_role, actor_uid FROM position_audit "
        "WHERE position_id = %s ORDER BY id",
        (position_id,),
    ).fetchall()
    assert rows == [("position", "created", "authenticated", a.user_id)]
    # A new, unreferenced signal of one's own may be changed and deleted.
    assert _try(as_a, "UPDATE signals SET status = 'cancelled' WHERE id = %s", signal) == "rows=1"
    assert _try(as_a, "DELETE FROM signals WHERE id = %s", signal) == "rows=1"
    assert _try(as_a, "UPDATE traders SET name = 'renamed' WHERE id = %s", trader) == "rows=1"
    # B sees none of it.
    with psycopg.connect(db_url, autocommit=True) as as_b:
        act_as(as_b, world.b.owner.user_id)
        assert _visible(as_b) == {t: world.ids[t][world.b.owner.user_id] for t in TABLES}


def test_user_cannot_create_rows_past_the_lifecycle(world: World, as_a: Conn) -> None:
    a = world.a.owner
    with pytest.raises(psycopg.Error) as info:
        insert_position(as_a, a, status="open")
    assert info.value.sqlstate == "PW001"
    outcome = _try(
        as_a,
        "INSERT INTO orders (position_id, user_id, symbol, side, type, quantity, status) "
        "VALUES (%s, %s, 'BTCUSDT', 'buy', 'market', 1, 'filled')",
        (world.a.position_id, a.user_id),
    )
    assert outcome == denied("orders")


@pytest.mark.parametrize(
    ("column", "value"),
    [("realized_pnl", Decimal("1000000")), ("held_quantity", Decimal("100"))],
)
def test_user_cannot_insert_a_position_with_worker_owned_figures(
    world: World, as_a: Conn, column: str, value: Decimal
) -> None:
    extra: dict[str, Any] = {column: value}
    with pytest.raises(psycopg.Error) as info:
        insert_position(as_a, world.a.owner, **extra)
    assert info.value.sqlstate == "42501"


def test_update_privileges_of_authenticated_are_exactly_the_risk_columns(
    owner_conn: Conn,
) -> None:
    rows = owner_conn.execute(
        "SELECT attname::text, has_column_privilege('authenticated', 'positions', attname, "
        "'UPDATE') FROM pg_attribute WHERE attrelid = 'positions'::regclass AND attnum > 0 "
        "AND NOT attisdropped"
    ).fetchall()
    assert {name for name, can in rows if can} == USER_UPDATABLE
    assert len(rows) > 30


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("status", "submitting"),
        ("realized_pnl", 1000),
        ("realized_pnl_percent", 50),
        ("fees_paid", 0),
        ("entry_price", 1),
        ("held_quantity", 100),
        ("is_paper_trade", True),
        ("failure_reason", "x"),
        ("signal_id", None),
        ("updated_at", None),
    ],
)
def test_user_cannot_update_lifecycle_or_pnl_columns_of_own_position(
    world: World, as_a: Conn, owner_conn: Conn, column: str, value: Any
) -> None:
    before = _snapshot(owner_conn)
    if column == "signal_id":
        value = world.a.owner.signal_id
    if column == "updated_at":
        value = datetime.fromisoformat("2000-01-01T00:00:00+00:00")
    outcome = _try(
        as_a, f"UPDATE positions SET {column} = %s WHERE id = %s", (value, world.a.position_id)
    )
    assert outcome == denied("positions")
    assert _snapshot(owner_conn) == before


def test_user_can_update_risk_columns_of_own_position(
    world: World, as_a: Conn, owner_conn: Conn
) -> None:
    outcome = _try(
        as_a,
        "UPDATE positions SET stop_loss_price = 25000, take_profit_price = 30000.5, "
        'max_loss_usdt = 100, metadata = \'{"note": "tight"}\' WHERE id = %s',
        (world.a.position_id,),
    )
    assert outcome == "rows=1"
    row = owner_conn.execute(
        "SELECT stop_loss_price, take_profit_price, max_loss_usdt, metadata, status "
        "FROM positions WHERE id = %s",
        (world.a.position_id,),
    ).fetchone()
    assert row == (
        Decimal("25000.00000000"),
        Decimal("30000.50000000"),
        Decimal("100.00000000"),
        {"note": "tight"},
        "submitting",
    )


def test_user_cannot_hand_a_row_to_another_user(world: World, as_a: Conn, owner_conn: Conn) -> None:
    before = _snapshot(owner_conn)
    b = world.b.owner.user_id
    outcomes = {
        t: _try(as_a, f"UPDATE {t} SET user_id = %s WHERE user_id = %s", (b, world.a.owner.user_id))
        for t in ("positions", "orders", "position_events", "signals", "traders")
    }
    assert outcomes == {
        "positions": denied("positions"),
        "orders": denied("orders"),
        "position_events": denied("position_events"),
        "signals": violates("signals"),
        "traders": violates("traders"),
    }
    assert _snapshot(owner_conn) == before


def test_table_privileges_per_role(owner_conn: Conn) -> None:
    privileges = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
    got: dict[tuple[str, str], set[str]] = {}
    for role in ("anon", "authenticated", "service_role"):
        for table in TABLES:
            got[(role, table)] = {
                p
                for p in privileges
                if owner_conn.execute(
                    "SELECT has_table_privilege(%s, %s, %s)", (role, table, p)
                ).fetchone()
                == (True,)
            }
    crud = {"SELECT", "INSERT", "UPDATE", "DELETE"}
    expected = {
        **{("anon", t): set() for t in TABLES},
        # INSERT and UPDATE of positions/orders are column privileges (checked below)
        ("authenticated", "positions"): {"SELECT"},
        ("authenticated", "orders"): {"SELECT"},
        ("authenticated", "trades"): {"SELECT"},
        # the audit columns only (column privileges; users read position_audit)
        ("authenticated", "position_events"): set(),
        ("authenticated", "signals"): crud,
        ("authenticated", "traders"): crud,
        # INSERT and UPDATE of positions are column privileges, as for users
        **{("service_role", t): {"SELECT"} for t in TABLES},
        ("service_role", "signals"): crud,
        ("service_role", "traders"): crud,
    }
    assert got == expected


USER_INSERTABLE = {
    "positions": {
        "id", "user_id", "trader_id", "signal_id", "symbol", "side", "status",
        "requested_quantity", "requested_quote", "limit_price", "stop_loss_price",
        "take_profit_price", "max_loss_usdt", "is_paper_trade", "metadata",
        "account_id",  # their own account only: a composite foreign key (schema/0013)
    },
    "orders": set(),
}  # fmt: skip


@pytest.mark.parametrize("table", sorted(USER_INSERTABLE))
def test_insert_privileges_of_authenticated_are_only_what_a_user_asks_for(
    owner_conn: Conn, table: str
) -> None:
    rows = owner_conn.execute(
        "SELECT attname::text, has_column_privilege('authenticated', %s, attname, 'INSERT')"
        " FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (table, table),
    ).fetchall()
    assert {name for name, can in rows if can} == USER_INSERTABLE[table]


def test_rls_is_enabled_on_every_user_table(owner_conn: Conn) -> None:
    rows = owner_conn.execute(
        "SELECT relname::text, relrowsecurity FROM pg_class "
        "WHERE relname = ANY(%s) AND relnamespace = 'public'::regnamespace",
        (list(TABLES),),
    ).fetchall()
    assert dict(rows) == dict.fromkeys(TABLES, True)
