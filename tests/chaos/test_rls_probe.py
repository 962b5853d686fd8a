"""RLS probing: an ``authenticated`` user A tries every table and every function on user B's
rows, and the leaks are counted (there must be none).

B's rows are listed by the owner (who bypasses RLS) by id, so that a probe never relies on
RLS to find them. Every probe runs in a transaction that is rolled back whatever happens:
a probe that did reach B's data is counted, and the next probe still sees the same world.
Positive controls (the same statements on A's own rows) show that the probes can succeed.

Counted as a leak: a row of B visible to A; a statement of A that changed one of B's rows
or attached a new row to B; a request function that accepted B's position; an error that
tells B's position apart from one that does not exist (an existence oracle).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.support import Owner, act_as, insert_position, seed_owner

pytestmark = pytest.mark.slow


@pytest.fixture(params=["plain", "supabase"])
def db_shape(request: pytest.FixtureRequest) -> str:
    return str(request.param)


Conn = psycopg.Connection[Any]
_B_POSITIONS = "(SELECT id FROM positions WHERE user_id = %(u)s)"
# Every table with users' data, and how the owner finds one user's rows in it.
OWNED = {
    "public.positions": "user_id = %(u)s",
    "public.orders": f"user_id = %(u)s OR position_id IN {_B_POSITIONS}",
    "public.trades": f"position_id IN {_B_POSITIONS}",
    "public.position_events": "user_id = %(u)s",
    "public.position_audit": "user_id = %(u)s",
    "public.position_requests": f"user_id = %(u)s OR position_id IN {_B_POSITIONS}",
    "public.signals": "user_id = %(u)s",
    "public.traders": "user_id = %(u)s",
    "auth.users": "id = %(u)s",
    "public.paper_orders": "user_id = %(u)s",
}
NOT_USER_DATA = {
    "public.schema_migrations",
    "public.schema_objects",
    "public.user_limit_defaults",
    "public.user_limits",  # keyed by user_id, no id: tests/security/test_quotas.py probes it
    "public.worker_orders",  # the engine's view of orders: no grant but the owner's
    # keyed by user_id or account_id, no grant to users at all (secrets) or own row only:
    # tests/security/test_exchange_accounts.py probes them
    "public.user_risk_limits",
    "public.exchange_accounts",
    "public.exchange_account_secrets",
    "public.exchange_account_secret_inbox",
    # keyed by (user_id, asset), no id, read-only for its owner:
    # tests/security/test_paper_state.py probes it
    "public.paper_balances",
}
# Functions an authenticated user may execute that take no position: auth's (Supabase's own
# auth.role() and auth.jwt() on the Supabase shape).
NO_POSITION = {"auth.uid", "auth.role", "auth.jwt"} | {
    # a user's own exchange accounts, by account id: tests/security/test_exchange_accounts.py
    # proves another user's account answers exactly like one that does not exist
    f"public.{verb}_exchange_account{suffix}"
    for verb, suffix in (
        ("add", ""), ("rotate", "_key"), ("disable", ""), ("enable", ""),
        ("delete", ""), ("set_default", ""),
    )
}  # fmt: skip
REQUEST_CALLS = (
    "SELECT request_position_exit(%(p)s)",
    "SELECT request_position_exit(%(p)s, 0.1)",
    "SELECT request_position_exit(%(p)s, NULL, 'ai')",
    "SELECT request_position_scale_in(%(p)s, 0.1)",
    "SELECT request_position_scale_in(%(p)s, NULL, 10)",
    "SELECT request_position_scale_in(%(p)s, 0.1, NULL, 'operator')",
)


@dataclass(frozen=True)
class User:
    owner: Owner
    position_id: uuid.UUID
    order_id: uuid.UUID


def _seed(conn: Conn) -> User:
    """A user with a monitoring position holding 0.5, its order and fill, a pending exit."""
    owner = seed_owner(conn)
    pid = insert_position(conn, owner)
    for status in ("submitting", "open", "monitoring"):
        conn.execute("UPDATE positions SET status = %s WHERE id = %s", (status, pid))
    conn.execute("UPDATE positions SET held_quantity = 0.5 WHERE id = %s", (pid,))
    row = conn.execute(
        "INSERT INTO orders (position_id, user_id, client_order_id, symbol, side, type,"
        " quantity, status) VALUES (%s, %s, %s, 'BTCUSDT', 'buy', 'market', 0.5, 'created')"
        " RETURNING id",
        (pid, owner.user_id, f"pw-{uuid.uuid4().hex[:20]}"),
    ).fetchone()
    assert row is not None
    conn.execute(
        "INSERT INTO trades (order_id, position_id, binance_trade_id, symbol, side, price,"
        " quantity, value, executed_at) VALUES (%s, %s, '1', 'BTCUSDT', 'buy', 100, 0.5, 50,"
        " now())",
        (row[0], pid),
    )
    conn.execute("SELECT request_position_scale_in(%s, 0.1)", (pid,))
    conn.execute(
        "INSERT INTO paper_orders (id, user_id, symbol, client_order_id, side, type, quantity,"
        " price, status, triggered, hold_asset, locked, time_ms) VALUES (%s, %s, 'BTCUSDT',"
        " 'c1', 'buy', 'limit', 1, 95, 'NEW', true, 'USDT', 95, 0)",
        (f"P{uuid.uuid4().hex[:24]}", owner.user_id),
    )
    return User(owner, pid, row[0])


def _rows_of(conn: Conn, user: uuid.UUID) -> dict[str, list[Any]]:
    """Ids of ``user``'s rows in every table, as the owner sees them."""
    return {
        table: [
            r[0]
            for r in conn.execute(
                sql.SQL("SELECT id FROM {} WHERE " + where).format(_ident(table)), {"u": user}
            )
        ]
        for table, where in OWNED.items()
    }


def _ident(table: str) -> sql.Identifier:
    schema, name = table.split(".")
    return sql.Identifier(schema, name)


@dataclass
class Probe:
    conn: Conn
    statements: int = 0

    def run(self, query: sql.SQL | sql.Composed | str, params: Any = None) -> tuple[str, Any]:
        """Run one statement in a transaction that is always rolled back:
        ("ok", rowcount or first value) or (SQLSTATE, message)."""
        self.statements += 1
        try:
            with self.conn.transaction(force_rollback=True):
                cur = self.conn.execute(query, params)
                if cur.description is not None:
                    row = cur.fetchone()
                    return "ok", row[0] if row else None
                return "ok", cur.rowcount
        except psycopg.Error as exc:
            return str(exc.sqlstate), exc.diag.message_primary


def _read_leaks(probe: Probe, table: str, b_ids: list[Any], a_ids: list[Any]) -> tuple[int, int]:
    """(B's rows A can read, A's own rows A can read: the positive control)."""
    t = _ident(table)
    state, visible = probe.run(
        sql.SQL("SELECT count(*) FROM {} WHERE id = ANY(%s)").format(t), (b_ids,)
    )
    leaked = int(visible) if state == "ok" else 0
    state, listed = probe.run(
        sql.SQL("SELECT count(*) FROM {} WHERE id = ANY(%s)").format(t), (b_ids + a_ids,)
    )
    own = int(listed) - leaked if state == "ok" else 0
    return leaked, own


def _write_leaks(
    probe: Probe, table: str, columns: list[str], b_ids: list[Any], a: uuid.UUID
) -> int:
    """Statements of A that changed (or deleted) one of B's rows."""
    t = _ident(table)
    where = sql.SQL("WHERE id = ANY(%s)")
    statements = [
        sql.SQL("UPDATE {} SET {} = {} ").format(t, sql.Identifier(c), sql.Identifier(c)) + where
        for c in columns
    ]
    if "user_id" in columns:
        statements.append(sql.SQL("UPDATE {} SET user_id = %s ").format(t) + where)
    statements += [sql.SQL("DELETE FROM {} ").format(t) + where]
    leaks = 0
    for statement in statements:
        params = (a, b_ids) if "user_id = %s" in statement.as_string(probe.conn) else (b_ids,)
        state, count = probe.run(statement, params)
        leaks += state == "ok" and int(count) > 0
    state, _ = probe.run(sql.SQL("TRUNCATE {} CASCADE").format(t))
    return leaks + (state == "ok")


def _insert_leaks(probe: Probe, a: User, b: User) -> int:
    """Rows A tries to create for B, or attached to B's position, signal or trader."""
    ao, bo = a.owner, b.owner
    position = (
        "INSERT INTO positions (user_id, trader_id, signal_id, symbol, side, status,"
        " requested_quantity) VALUES (%s, %s, %s, 'BTCUSDT', 'long', 'created', 1)"
    )
    order = (
        "INSERT INTO orders (position_id, user_id, symbol, side, type, quantity, status)"
        " VALUES (%s, %s, 'BTCUSDT', 'sell', 'market', 0.1, 'created')"
    )
    attempts = [
        (position, (bo.user_id, bo.trader_id, bo.signal_id)),
        (position, (ao.user_id, ao.trader_id, bo.signal_id)),
        (position, (ao.user_id, bo.trader_id, ao.signal_id)),
        (order, (b.position_id, bo.user_id)),
        (order, (b.position_id, ao.user_id)),
        (order, (a.position_id, bo.user_id)),
        (
            "INSERT INTO trades (order_id, position_id, symbol, side, price, quantity, value,"
            " executed_at) VALUES (%s, %s, 'BTCUSDT', 'sell', 1, 1, 1, now())",
            (b.order_id, b.position_id),
        ),
        (
            "INSERT INTO position_events (kind, position_id, user_id, symbol, actor_role)"
            " VALUES ('position', %s, %s, 'BTCUSDT', 'forged')",
            (b.position_id, bo.user_id),
        ),
        (
            "INSERT INTO position_requests (position_id, user_id, kind, reason)"
            " VALUES (%s, %s, 'exit', 'user')",
            (b.position_id, bo.user_id),
        ),
        (
            "INSERT INTO position_requests (position_id, user_id, kind, reason)"
            " VALUES (%s, %s, 'exit', 'user')",
            (b.position_id, ao.user_id),
        ),
        ("INSERT INTO signals (user_id) VALUES (%s)", (bo.user_id,)),
        ("INSERT INTO traders (user_id) VALUES (%s)", (bo.user_id,)),
        ("INSERT INTO auth.users (id, email) VALUES (%s, 'x@y')", (uuid.uuid4(),)),
    ]
    return sum(probe.run(statement, params)[0] == "ok" for statement, params in attempts)


def _function_leaks(probe: Probe, a: User, b: User) -> tuple[int, int, bool]:
    """(calls that accepted B's position, errors that tell it from a missing one, control)."""
    accepted = oracles = 0
    nobody = uuid.uuid4()
    for call in REQUEST_CALLS:
        state, answer = probe.run(call, {"p": b.position_id})
        accepted += state == "ok"
        missing = probe.run(call, {"p": nobody})
        oracles += (state, str(answer).replace(str(b.position_id), "<id>")) != (
            missing[0],
            str(missing[1]).replace(str(nobody), "<id>"),
        )
    control = probe.run(REQUEST_CALLS[0], {"p": a.position_id})[0] == "ok"
    return accepted, oracles, control


def _schema(conn: Conn) -> tuple[set[str], dict[str, list[str]], set[str]]:
    """Tables of the public and auth schemas, their columns, and the functions that an
    authenticated user may execute there."""
    tables = {
        f"{s}.{t}"
        for s, t in conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema IN ('public', 'auth')"
        )
    }
    columns: dict[str, list[str]] = {}
    for s, t, c in conn.execute(
        "SELECT table_schema, table_name, column_name FROM information_schema.columns"
        " WHERE table_schema IN ('public', 'auth') ORDER BY ordinal_position"
    ):
        columns.setdefault(f"{s}.{t}", []).append(str(c))
    functions = {
        f"{s}.{f}"
        for s, f in conn.execute(
            "SELECT n.nspname, p.proname FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname IN ('public', 'auth')"
            " AND has_function_privilege('authenticated', p.oid, 'EXECUTE')"
        )
    }
    return tables, columns, functions


def test_an_authenticated_user_reaches_none_of_another_users_rows(
    db_url: str, report: Callable[..., str]
) -> None:
    with psycopg.connect(db_url, autocommit=True) as owner_conn:
        a, b = _seed(owner_conn), _seed(owner_conn)
        b_rows = _rows_of(owner_conn, b.owner.user_id)
        a_rows = _rows_of(owner_conn, a.owner.user_id)
        tables, columns, functions = _schema(owner_conn)
    # A new table or function must be added to the probes (or declared harmless) first.
    assert tables == set(OWNED) | NOT_USER_DATA
    probed_functions = {"public.request_position_exit", "public.request_position_scale_in"}
    assert probed_functions <= functions <= probed_functions | NO_POSITION
    assert all(b_rows.values()), b_rows

    leaks: Counter[str] = Counter()
    readable_own: dict[str, int] = {}
    writable_own: dict[str, int] = {}
    with psycopg.connect(db_url, autocommit=True) as conn:
        act_as(conn, a.owner.user_id)
        probe = Probe(conn)
        for table in OWNED:
            read, own = _read_leaks(probe, table, b_rows[table], a_rows[table])
            leaks["read"] += read
            readable_own[table] = own
            leaks["write"] += _write_leaks(
                probe, table, columns[table], b_rows[table], a.owner.user_id
            )
            writable_own[table] = _write_leaks(
                probe, table, columns[table], a_rows[table], a.owner.user_id
            )
        leaks["insert"] += _insert_leaks(probe, a, b)
        insertable_own = _insert_leaks(probe, a, a)
        accepted, oracles, control = _function_leaks(probe, a, b)
        leaks["call"] += accepted
        leaks["oracle"] += oracles
    report(
        "rls-probe",
        statements=probe.statements,
        tables=len(OWNED),
        functions=len(probed_functions),
        leaks=sum(leaks.values()),
        **{k: leaks[k] for k in ("read", "write", "insert", "call", "oracle")},
    )
    assert sum(leaks.values()) == 0, dict(leaks)
    # Positive controls: the same probes do reach A's own rows.
    assert control, "A could not request an exit of A's own position"
    assert insertable_own > 0
    assert {t for t, n in writable_own.items() if n} == {
        "public.positions",  # the risk columns and metadata
        "public.signals",
        "public.traders",
    }
    assert readable_own == {
        table: 0 if table == "auth.users" else len(a_rows[table]) for table in OWNED
    }
