"""The schema against a real PostgreSQL: lifecycle guards, notifications, audit, concurrency.

Each test gets a fresh migrated database (``db_url``). The connections here log in as the
role that ran the migrations (the owner), unless a test switches role with ``act_as``.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

import psycopg
import pytest

from tests.support import Owner, act_as, insert_position, seed_owner
from worker import lifecycle

Conn = psycopg.Connection[Any]


@pytest.fixture(params=["plain", "supabase"])
def db_shape(request: pytest.FixtureRequest) -> str:
    """Every test here runs on a plain PostgreSQL and on a Supabase-shaped database."""
    return str(request.param)


POSITION_STATES = lifecycle.POSITION_STATUSES
ORDER_STATES = lifecycle.ORDER_STATUSES
NOTIFY_KEYS = {"position_id", "old_status", "new_status", "user_id", "symbol"}
WAIT = 10.0  # seconds: an upper bound for anything that should take milliseconds


def _paths(table: dict[str, frozenset[str]]) -> dict[str, list[str]]:
    """The shortest legal path from created to every state (statuses after created)."""
    paths: dict[str, list[str]] = {"created": []}
    todo = deque(["created"])
    while todo:
        state = todo.popleft()
        for nxt in sorted(table[state]):
            if nxt not in paths:
                paths[nxt] = [*paths[state], nxt]
                todo.append(nxt)
    return paths


POSITION_PATHS = _paths(lifecycle.POSITION_TRANSITIONS)
ORDER_PATHS = _paths(lifecycle.ORDER_TRANSITIONS)


@pytest.fixture
def conn(db_url: str) -> Iterator[Conn]:
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


@pytest.fixture
def owner(conn: Conn) -> Owner:
    return seed_owner(conn)


def _drive_position(conn: Conn, position_id: uuid.UUID, target: str) -> None:
    for status in POSITION_PATHS[target]:
        cur = conn.execute("UPDATE positions SET status = %s WHERE id = %s", (status, position_id))
        assert cur.rowcount == 1


def _insert_order(conn: Conn, owner: Owner, position_id: uuid.UUID, **extra: Any) -> uuid.UUID:
    columns: dict[str, Any] = {
        "position_id": position_id,
        "user_id": owner.user_id,
        "client_order_id": f"pw-{uuid.uuid4().hex[:20]}",
        "symbol": "BTCUSDT",
        "side": "buy",
        "type": "market",
        "quantity": Decimal("0.5"),
        "status": "created",
        **extra,
    }
    columns = {k: v for k, v in columns.items() if v is not None}  # None: leave it out
    row = conn.execute(
        f"INSERT INTO orders ({', '.join(columns)}) "
        f"VALUES ({', '.join(['%s'] * len(columns))}) RETURNING id",
        list(columns.values()),
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def _insert_trade(conn: Conn, order_id: uuid.UUID, position_id: uuid.UUID, **extra: Any) -> None:
    columns: dict[str, Any] = {
        "order_id": order_id,
        "position_id": position_id,
        "binance_trade_id": str(uuid.uuid4().int % 10**9),
        "symbol": "BTCUSDT",
        "side": "buy",
        "price": Decimal("27000.5"),
        "quantity": Decimal("0.25"),
        "value": Decimal("6750.125"),
        "fee": Decimal("0.00025"),
        "fee_asset": "BTC",
        "executed_at": datetime.fromisoformat("2025-11-04T12:00:00+00:00"),
        **extra,
    }
    conn.execute(
        f"INSERT INTO trades ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})",
        list(columns.values()),
    )


def _status(conn: Conn, table: str, row_id: uuid.UUID) -> str:
    row = conn.execute(f"SELECT status FROM {table} WHERE id = %s", (row_id,)).fetchone()
    assert row is not None
    return str(row[0])


def _event_count(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM position_events").fetchone()
    assert row is not None
    return int(row[0])


def _events(conn: Conn, position_id: uuid.UUID, kind: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT old_status, new_status FROM position_events "
        "WHERE position_id = %s AND kind = %s ORDER BY id",
        (position_id, kind),
    ).fetchall()


def _login_role(conn: Conn) -> str:
    row = conn.execute("SELECT session_user::text").fetchone()
    assert row is not None
    return str(row[0])


def _expect_error(sqlstate: str, action: Callable[[], object]) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        action()
    assert info.value.sqlstate == sqlstate, info.value
    return info.value


# Transition tables: Python and SQL agree ------------------------------------------------------


def test_sql_transition_functions_agree_with_python_for_every_pair(conn: Conn) -> None:
    for func, states, allowed in (
        ("position_transition_allowed", POSITION_STATES, lifecycle.position_transition_allowed),
        ("order_transition_allowed", ORDER_STATES, lifecycle.order_transition_allowed),
    ):
        rows = conn.execute(
            f"SELECT o, n, {func}(o, n) FROM unnest(%s::text[]) o, unnest(%s::text[]) n",
            (list(states), list(states)),
        ).fetchall()
        assert len(rows) == len(states) ** 2
        for old, new, sql_says in rows:
            if old == new:
                # Not a move: the guard trigger does not fire when the status is unchanged.
                assert sql_says is False
                continue
            assert sql_says is allowed(old, new), f"{func}({old}, {new})"
        # Unknown and NULL states are never allowed.
        row = conn.execute(
            f"SELECT {func}('created', 'bogus'), {func}('bogus', 'created'), "
            f"coalesce({func}(NULL, 'created'), false)"
        ).fetchone()
        assert row == (False, False, False)


# Every move, legal and illegal, as the database sees it ---------------------------------------


@pytest.mark.parametrize("source", POSITION_STATES)
def test_every_position_move_from_a_state(conn: Conn, owner: Owner, source: str) -> None:
    position_id = insert_position(conn, owner)
    _drive_position(conn, position_id, source)
    events_before = _event_count(conn)
    update = "UPDATE positions SET status = %s WHERE id = %s RETURNING status"
    for target in POSITION_STATES:
        if target == source:
            continue
        if lifecycle.position_transition_allowed(source, target):
            with conn.transaction():
                row = conn.execute(update, (target, position_id)).fetchone()
                assert row == (target,)
                raise psycopg.Rollback()
            continue
        exc = _expect_error("PW001", partial(conn.execute, update, (target, position_id)))
        assert exc.diag.message_primary == (
            f"illegal position transition: {source} -> {target} (position {position_id})"
        )
        assert exc.diag.message_hint is not None and "created->submitting" in exc.diag.message_hint
    assert _status(conn, "positions", position_id) == source
    assert _event_count(conn) == events_before


@pytest.mark.parametrize("source", ORDER_STATES)
def test_every_order_move_from_a_state(conn: Conn, owner: Owner, source: str) -> None:
    position_id = insert_position(conn, owner)
    order_id = _insert_order(conn, owner, position_id)
    for status in ORDER_PATHS[source]:
        conn.execute("UPDATE orders SET status = %s WHERE id = %s", (status, order_id))
    assert _status(conn, "orders", order_id) == source
    events_before = _event_count(conn)
    update = "UPDATE orders SET status = %s WHERE id = %s RETURNING status"
    for target in ORDER_STATES:
        if target == source:
            continue
        if lifecycle.order_transition_allowed(source, target):
            with conn.transaction():
                assert conn.execute(update, (target, order_id)).fetchone() == (target,)
                raise psycopg.Rollback()
            continue
        exc = _expect_error("PW002", partial(conn.execute, update, (target, order_id)))
        assert exc.diag.message_primary == (
            f"illegal order transition: {source} -> {target} (order {order_id})"
        )
    assert _status(conn, "orders", order_id) == source
    assert _event_count(conn) == events_before


def test_spec_examples_rejected_by_the_database(conn: Conn, owner: Owner) -> None:
    created = insert_position(conn, owner)
    exc = _expect_error(
        "PW001",
        lambda: conn.execute("UPDATE positions SET status = 'closed' WHERE id = %s", (created,)),
    )
    assert "created -> closed" in str(exc)
    closed = insert_position(conn, owner)
    _drive_position(conn, closed, "closed")
    exc = _expect_error(
        "PW001",
        lambda: conn.execute("UPDATE positions SET status = 'open' WHERE id = %s", (closed,)),
    )
    assert "closed -> open" in str(exc)
    # Unknown statuses are refused by the guard before the CHECK constraint sees them.
    exc = _expect_error(
        "PW001",
        lambda: conn.execute("UPDATE positions SET status = 'bogus' WHERE id = %s", (created,)),
    )
    assert "created -> bogus" in str(exc)
    _expect_error(
        "23502",
        lambda: conn.execute("UPDATE positions SET status = NULL WHERE id = %s", (created,)),
    )
    assert _status(conn, "positions", created) == "created"


def test_partially_filled_order_cancelled_keeps_its_fills(conn: Conn, owner: Owner) -> None:
    position_id = insert_position(conn, owner)
    order_id = _insert_order(conn, owner, position_id)
    conn.execute("UPDATE orders SET status = 'submitted' WHERE id = %s", (order_id,))
    conn.execute(
        "UPDATE orders SET status = 'partially_filled', filled_quantity = 0.2 WHERE id = %s",
        (order_id,),
    )
    _insert_trade(conn, order_id, position_id, quantity=Decimal("0.2"), value=Decimal("5400.1"))
    conn.execute("UPDATE orders SET status = 'cancelled' WHERE id = %s", (order_id,))
    row = conn.execute(
        "SELECT status, filled_quantity, (SELECT count(*) FROM trades WHERE order_id = o.id) "
        "FROM orders o WHERE id = %s",
        (order_id,),
    ).fetchone()
    assert row == ("cancelled", Decimal("0.20000000"), 1)


def test_insert_in_another_status_is_rejected(conn: Conn, owner: Owner) -> None:
    position_id = insert_position(conn, owner)
    events = _event_count(conn)
    for status in POSITION_STATES[1:]:
        exc = _expect_error("PW001", partial(insert_position, conn, owner, status=status))
        assert exc.diag.message_primary == (
            f"a new position must start in status created, not {status}"
        )
    for status in ORDER_STATES[1:]:
        exc = _expect_error(
            "PW002", partial(_insert_order, conn, owner, position_id, status=status)
        )
        assert exc.diag.message_primary == f"a new order must start in status created, not {status}"
    assert conn.execute("SELECT count(*) FROM positions").fetchone() == (1,)
    assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)
    assert _event_count(conn) == events


# Notifications --------------------------------------------------------------------------------


@pytest.fixture
def listener(db_url: str) -> Iterator[Conn]:
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("LISTEN position_state_change")
        yield c


def _receive(listener: Conn, count: int) -> list[dict[str, Any]]:
    got = [
        json.loads(n.payload)
        for n in listener.notifies(timeout=WAIT, stop_after=count)
        if n.channel == "position_state_change"
    ]
    assert len(got) == count, got
    return got


def _payload(position_id: uuid.UUID, owner: Owner, old: str | None, new: str) -> dict[str, Any]:
    return {
        "position_id": str(position_id),
        "old_status": old,
        "new_status": new,
        "user_id": str(owner.user_id),
        "symbol": "BTCUSDT",
    }


def test_notify_on_insert_and_on_status_change(conn: Conn, owner: Owner, listener: Conn) -> None:
    position_id = insert_position(conn, owner)
    [created] = _receive(listener, 1)
    assert set(created) == NOTIFY_KEYS
    assert created == _payload(position_id, owner, None, "created")

    conn.execute("UPDATE positions SET status = 'submitting' WHERE id = %s", (position_id,))
    [submitting] = _receive(listener, 1)
    assert set(submitting) == NOTIFY_KEYS
    assert submitting == _payload(position_id, owner, "created", "submitting")


def test_no_notify_when_status_unchanged_or_rolled_back(
    conn: Conn, owner: Owner, listener: Conn
) -> None:
    position_id = insert_position(conn, owner)
    _receive(listener, 1)
    # Changes that leave the status as it is ...
    conn.execute("UPDATE positions SET stop_loss_price = 100 WHERE id = %s", (position_id,))
    conn.execute("UPDATE positions SET status = 'created' WHERE id = %s", (position_id,))
    conn.execute(
        "UPDATE positions SET status = status, metadata = '{}' WHERE id = %s", (position_id,)
    )
    # ... and a status change that is rolled back ...
    with conn.transaction():
        conn.execute("UPDATE positions SET status = 'failed' WHERE id = %s", (position_id,))
        raise psycopg.Rollback()
    # ... send nothing: the next notification is the next real change (same session, so
    # notifications arrive in commit order).
    conn.execute("UPDATE positions SET status = 'submitting' WHERE id = %s", (position_id,))
    [nxt] = _receive(listener, 1)
    assert nxt == _payload(position_id, owner, "created", "submitting")
    assert _events(conn, position_id, "position") == [(None, "created"), ("created", "submitting")]


def test_notify_only_on_commit_and_each_change_of_a_transaction(
    conn: Conn, owner: Owner, listener: Conn, db_url: str
) -> None:
    first = insert_position(conn, owner)
    second = insert_position(conn, owner)
    _receive(listener, 2)
    with psycopg.connect(db_url) as other:  # not autocommit: holds its transaction open
        other.execute("UPDATE positions SET status = 'submitting' WHERE id = %s", (first,))
        other.execute("UPDATE positions SET status = 'open' WHERE id = %s", (first,))
        conn.execute("UPDATE positions SET status = 'failed' WHERE id = %s", (second,))
        # The committed change arrives; the open transaction's have not been sent.
        [only] = _receive(listener, 1)
        assert only == _payload(second, owner, "created", "failed")
        other.commit()
    assert _receive(listener, 2) == [
        _payload(first, owner, "created", "submitting"),
        _payload(first, owner, "submitting", "open"),
    ]


def test_order_and_trade_changes_wake_the_worker_channel(
    conn: Conn, owner: Owner, db_url: str
) -> None:
    position_id = insert_position(conn, owner)
    with psycopg.connect(db_url, autocommit=True) as wake:
        wake.execute("LISTEN position_worker_wakeup")
        order_id = _insert_order(conn, owner, position_id)
        conn.execute("UPDATE orders SET status = 'submitted' WHERE id = %s", (order_id,))
        _insert_trade(conn, order_id, position_id)
        got = [(n.channel, n.payload) for n in wake.notifies(timeout=WAIT, stop_after=3)]
    assert got == [("position_worker_wakeup", "")] * 3


# updated_at and the signal --------------------------------------------------------------------


@pytest.mark.parametrize("table", ["positions", "orders"])
def test_updated_at_is_set_on_every_update(conn: Conn, owner: Owner, table: str) -> None:
    position_id = insert_position(conn, owner)
    row_id = _insert_order(conn, owner, position_id) if table == "orders" else position_id
    before = conn.execute(
        f"SELECT created_at, updated_at FROM {table} WHERE id = %s", (row_id,)
    ).fetchone()
    assert before is not None and before[0] == before[1]
    other_column = "metadata" if table == "positions" else "error_message"
    with conn.transaction():
        # A caller cannot set updated_at: the trigger stamps the transaction's time.
        row = conn.execute(
            f"UPDATE {table} SET updated_at = '2000-01-01', {other_column} = {other_column} "
            "WHERE id = %s RETURNING created_at, updated_at, now()",
            (row_id,),
        ).fetchone()
    assert row is not None
    created_at, updated_at, now = row
    assert created_at == before[0]
    assert updated_at == now
    assert updated_at > before[1]


def _signal(conn: Conn, owner: Owner) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT status, closed_at, updated_at FROM signals WHERE id = %s", (owner.signal_id,)
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_signal_follows_position_open_and_close(conn: Conn, owner: Owner) -> None:
    position_id = insert_position(conn, owner)
    _drive_position(conn, position_id, "submitting")
    status, closed_at, first_updated = _signal(conn, owner)
    assert (status, closed_at) == ("active", None)

    with conn.transaction():
        conn.execute("UPDATE positions SET status = 'open' WHERE id = %s", (position_id,))
        open_time = conn.execute("SELECT now()").fetchone()
    status, closed_at, updated_at = _signal(conn, owner)
    assert (status, closed_at) == ("in_position", None)
    assert open_time is not None and updated_at == open_time[0] > first_updated

    conn.execute("UPDATE positions SET status = 'monitoring' WHERE id = %s", (position_id,))
    conn.execute("UPDATE positions SET status = 'closing' WHERE id = %s", (position_id,))
    assert _signal(conn, owner)[:2] == ("in_position", None)

    with conn.transaction():
        conn.execute("UPDATE positions SET status = 'closed' WHERE id = %s", (position_id,))
        close_time = conn.execute("SELECT now()").fetchone()
    assert close_time is not None
    assert _signal(conn, owner) == ("completed", close_time[0], close_time[0])


def test_failed_position_leaves_the_signal_alone(conn: Conn, owner: Owner) -> None:
    position_id = insert_position(conn, owner)
    before = _signal(conn, owner)
    _drive_position(conn, position_id, "submitting")
    conn.execute("UPDATE positions SET status = 'failed' WHERE id = %s", (position_id,))
    assert _signal(conn, owner) == before


# The audit trail ------------------------------------------------------------------------------


def test_audit_row_for_every_position_status_change(conn: Conn, owner: Owner) -> None:
    start = conn.execute("SELECT clock_timestamp()").fetchone()
    position_id = insert_position(conn, owner)
    walk = ["submitting", "open", "monitoring", "closing", "open", "closing", "closed"]
    for status in walk:
        conn.execute("UPDATE positions SET status = %s WHERE id = %s", (status, position_id))
    # Changes that are not status changes are not audited.
    conn.execute("UPDATE positions SET metadata = '{\"a\": 1}' WHERE id = %s", (position_id,))
    rows = conn.execute(
        "SELECT kind, position_id, order_id, user_id, symbol, old_status, new_status, "
        "actor_role, actor_uid, occurred_at FROM position_events ORDER BY id"
    ).fetchall()
    states = ["created", *walk]
    assert [(r[5], r[6]) for r in rows] == list(zip([None, *states[:-1]], states, strict=True))
    login = _login_role(conn)
    for kind, pid, order_id, user_id, symbol, _, _, role, uid, _ in rows:
        assert (kind, pid, order_id, user_id, symbol) == (
            "position", position_id, None, owner.user_id, "BTCUSDT",
        )  # fmt: skip
        assert (role, uid) == (login, None)
    times = [r[9] for r in rows]
    assert start is not None and start[0] <= times[0]
    assert times == sorted(times)


def test_audit_row_records_amounts_as_exact_decimal_strings(conn: Conn, owner: Owner) -> None:
    position_id = insert_position(conn, owner)
    _drive_position(conn, position_id, "submitting")
    conn.execute(
        "UPDATE positions SET status = 'open', entry_price = 27000.5, entry_quantity = 0.1, "
        "held_quantity = 0.0999 WHERE id = %s",
        (position_id,),
    )
    row = conn.execute(
        "SELECT data FROM position_events WHERE position_id = %s AND new_status = 'open'",
        (position_id,),
    ).fetchone()
    assert row is not None
    assert row[0] == {
        "side": "long",
        "is_paper_trade": False,
        "entry_price": "27000.50000000",
        "entry_quantity": "0.10000000",
        "held_quantity": "0.09990000",
    }


def test_audit_rows_for_orders_and_trades(conn: Conn, owner: Owner) -> None:
    position_id = insert_position(conn, owner)
    order_id = _insert_order(conn, owner, position_id, client_order_id="pw-entry-1")
    for status in ("submitted", "partially_filled"):
        conn.execute("UPDATE orders SET status = %s WHERE id = %s", (status, order_id))
    conn.execute("UPDATE orders SET filled_quantity = 0.25 WHERE id = %s", (order_id,))
    _insert_trade(conn, order_id, position_id, binance_trade_id="777")
    conn.execute("UPDATE orders SET status = 'filled' WHERE id = %s", (order_id,))
    rows = conn.execute(
        "SELECT kind, order_id, user_id, old_status, new_status, actor_role, "
        "data->>'client_order_id', data->>'binance_trade_id', data->>'price' "
        "FROM position_events WHERE kind <> 'position' ORDER BY id"
    ).fetchall()
    login = _login_role(conn)
    uid = owner.user_id
    assert rows == [
        ("order", order_id, uid, None, "created", login, "pw-entry-1", None, None),
        ("order", order_id, uid, "created", "submitted", login, "pw-entry-1", None, None),
        ("order", order_id, uid, "submitted", "partially_filled", login, "pw-entry-1", None, None),
        ("trade", order_id, uid, None, None, login, None, "777", "27000.50000000"),
        ("order", order_id, uid, "partially_filled", "filled", login, "pw-entry-1", None, None),
    ]


def test_audit_records_the_acting_role_and_jwt_subject(db_url: str, owner: Owner) -> None:
    with psycopg.connect(db_url, autocommit=True) as user:
        act_as(user, owner.user_id)
        position_id = insert_position(user, owner)
    with psycopg.connect(db_url, autocommit=True) as service:
        act_as(service, owner.user_id, role="service_role")
        insert_position(service, owner)
    with psycopg.connect(db_url, autocommit=True) as worker:
        worker.execute("UPDATE positions SET status = 'submitting' WHERE id = %s", (position_id,))
        order_id = _insert_order(worker, owner, position_id)
        _insert_trade(worker, order_id, position_id)
        login = _login_role(worker)
        rows = worker.execute(
            "SELECT kind, new_status, actor_role, actor_uid FROM position_events ORDER BY id"
        ).fetchall()
    uid = owner.user_id
    assert rows == [
        ("position", "created", "authenticated", uid),
        ("position", "created", "service_role", uid),
        ("position", "submitting", login, None),
        ("order", "created", login, None),
        ("trade", None, login, None),
    ]


@pytest.fixture
def one_event(conn: Conn, owner: Owner) -> int:
    insert_position(conn, owner)
    row = conn.execute("SELECT id FROM position_events").fetchone()
    assert row is not None
    return int(row[0])


_AUDIT_REWRITES = {
    "update audit columns": "UPDATE position_events SET new_status = 'closed' WHERE id = %s",
    "update delivery columns": "UPDATE position_events SET processed_at = now() WHERE id = %s",
    "delete": "DELETE FROM position_events WHERE id = %s",
    "truncate": "TRUNCATE position_events",
    "insert": "INSERT INTO position_events (kind, position_id, user_id, symbol, actor_role) "
    "SELECT kind, position_id, user_id, symbol, 'forged' FROM position_events WHERE id = %s",
}


@pytest.mark.parametrize("role", ["authenticated", "service_role"])
def test_audit_trail_is_append_only_for_users_and_service_role(
    db_url: str, conn: Conn, owner: Owner, one_event: int, role: str
) -> None:
    outcomes: dict[str, str | None] = {}
    with psycopg.connect(db_url, autocommit=True) as c:
        act_as(c, owner.user_id, role=role)
        for label, statement in _AUDIT_REWRITES.items():
            params = (one_event,) if "%s" in statement else None
            try:
                c.execute(statement, params)
                outcomes[label] = "accepted"
            except psycopg.Error as exc:
                outcomes[label] = exc.sqlstate
        # Still readable (own rows for authenticated, all for service_role).
        assert c.execute("SELECT count(*) FROM position_events").fetchone() == (1,)
    assert outcomes == dict.fromkeys(_AUDIT_REWRITES, "42501")
    row = conn.execute(
        "SELECT count(*), min(new_status), bool_and(processed_at IS NULL) FROM position_events"
    ).fetchone()
    assert row == (1, "created", True)


def test_owner_can_update_delivery_columns(conn: Conn, one_event: int) -> None:
    cur = conn.execute(
        "UPDATE position_events SET processed_at = now(), attempts = attempts + 1, "
        "last_error = 'e1' WHERE id = %s",
        (one_event,),
    )
    assert cur.rowcount == 1
    row = conn.execute(
        "SELECT attempts, last_error, processed_at IS NOT NULL FROM position_events WHERE id = %s",
        (one_event,),
    ).fetchone()
    assert row == (1, "e1", True)


# Concurrency ----------------------------------------------------------------------------------

CAS = "UPDATE positions SET status = %s WHERE id = %s AND status = %s"
PLAIN = "UPDATE positions SET status = %s WHERE id = %s"


def _wait_until_blocked(monitor: Conn, pid: int) -> None:
    """Return once backend ``pid`` waits for a lock another session holds."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        row = monitor.execute("SELECT cardinality(pg_blocking_pids(%s))", (pid,)).fetchone()
        if row is not None and row[0] > 0:
            return
    pytest.fail(f"backend {pid} never blocked")


def _outcome(conn: Conn, sql: str, params: tuple[Any, ...]) -> str:
    """Run in its own transaction: 'rows=N' on commit, the SQLSTATE and message on error."""
    try:
        cur = conn.execute(sql, params)
        conn.commit()
        return f"rows={cur.rowcount}"
    except psycopg.Error as exc:
        conn.rollback()
        return f"{exc.sqlstate}: {exc.diag.message_primary}"


def _blocked_race(
    db_url: str, monitor: Conn, first: tuple[str, tuple[Any, ...]], second: tuple[str, Any]
) -> str:
    """``first`` takes the row lock (1 row); ``second`` queues behind it; ``first`` commits.

    Returns the outcome of ``second``.
    """
    result: list[str] = []
    with psycopg.connect(db_url) as one, psycopg.connect(db_url) as two:
        assert one.execute(*first).rowcount == 1
        thread = threading.Thread(target=lambda: result.append(_outcome(two, *second)))
        thread.start()
        _wait_until_blocked(monitor, two.info.backend_pid)
        one.commit()
        thread.join(WAIT)
        assert not thread.is_alive()
    return result[0]


def test_compare_and_set_loser_waits_then_updates_nothing(
    conn: Conn, owner: Owner, listener: Conn, db_url: str
) -> None:
    position_id = insert_position(conn, owner)
    _receive(listener, 1)
    move = (CAS, ("submitting", position_id, "created"))
    assert _blocked_race(db_url, conn, move, move) == "rows=0"
    assert _status(conn, "positions", position_id) == "submitting"
    assert _events(conn, position_id, "position") == [(None, "created"), ("created", "submitting")]
    # Exactly one notification for the race: the next one is the sentinel change.
    conn.execute("UPDATE positions SET status = 'open' WHERE id = %s", (position_id,))
    assert _receive(listener, 2) == [
        _payload(position_id, owner, "created", "submitting"),
        _payload(position_id, owner, "submitting", "open"),
    ]


def test_plain_update_loser_gets_a_clear_error(conn: Conn, owner: Owner, db_url: str) -> None:
    position_id = insert_position(conn, owner)
    _drive_position(conn, position_id, "submitting")
    lost = _blocked_race(
        db_url, conn, (PLAIN, ("open", position_id)), (PLAIN, ("failed", position_id))
    )
    assert lost == f"PW001: illegal position transition: open -> failed (position {position_id})"
    assert _status(conn, "positions", position_id) == "open"
    assert _events(conn, position_id, "position")[-1] == ("submitting", "open")
    assert len(_events(conn, position_id, "position")) == 3


def test_plain_update_to_the_same_state_is_a_no_op_for_the_loser(
    conn: Conn, owner: Owner, db_url: str
) -> None:
    position_id = insert_position(conn, owner)
    _drive_position(conn, position_id, "submitting")
    move = (PLAIN, ("open", position_id))
    # The second UPDATE finds the status already 'open': no move, no second audit row.
    assert _blocked_race(db_url, conn, move, move) == "rows=1"
    assert _events(conn, position_id, "position") == [
        (None, "created"), ("created", "submitting"), ("submitting", "open"),
    ]  # fmt: skip


def _free_race(
    db_url: str, jobs: list[tuple[tuple[str, tuple[Any, ...]], tuple[str, tuple[Any, ...]]]]
) -> list[tuple[str, str]]:
    """Two sessions in two threads run each pair of statements at the same moment."""
    barrier = threading.Barrier(2, timeout=WAIT)
    results: list[list[str]] = [[], []]
    failures: list[BaseException] = []

    def session(side: int) -> None:
        try:
            with psycopg.connect(db_url) as c:
                for job in jobs:
                    barrier.wait()
                    results[side].append(_outcome(c, *job[side]))
        except BaseException as exc:
            failures.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=session, args=(side,)) for side in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 3)
    assert not failures, failures
    assert not any(t.is_alive() for t in threads)
    return list(zip(results[0], results[1], strict=True))


def test_racing_compare_and_set_exactly_one_wins(conn: Conn, owner: Owner, db_url: str) -> None:
    ids = [insert_position(conn, owner) for _ in range(12)]
    move = [((CAS, ("submitting", pid, "created")),) * 2 for pid in ids]
    for one, two in _free_race(db_url, move):
        assert sorted([one, two]) == ["rows=0", "rows=1"]
    for pid in ids:
        assert _status(conn, "positions", pid) == "submitting"
        assert _events(conn, pid, "position") == [(None, "created"), ("created", "submitting")]


def test_racing_plain_updates_exactly_one_wins(conn: Conn, owner: Owner, db_url: str) -> None:
    ids = [insert_position(conn, owner) for _ in range(12)]
    for pid in ids:
        _drive_position(conn, pid, "submitting")
    jobs = [((PLAIN, ("open", pid)), (PLAIN, ("failed", pid))) for pid in ids]
    for pid, (to_open, to_failed) in zip(ids, _free_race(db_url, jobs), strict=True):
        final = _status(conn, "positions", pid)
        if final == "open":
            assert to_open == "rows=1"
            assert (
                to_failed == f"PW001: illegal position transition: open -> failed (position {pid})"
            )
        else:
            assert final == "failed"
            assert to_failed == "rows=1"
            assert to_open == f"PW001: illegal position transition: failed -> open (position {pid})"
        assert _events(conn, pid, "position")[2:] == [("submitting", final)]


# Bad input ------------------------------------------------------------------------------------


def _check_rejections(
    conn: Conn, cases: list[tuple[str, dict[str, Any], str, str]], insert: Callable[..., object]
) -> None:
    """Each case is rejected with the expected SQLSTATE and constraint (or NOT NULL column)."""
    problems: list[str] = []
    for label, overrides, sqlstate, name in cases:
        try:
            with conn.transaction():
                insert(**overrides)
        except psycopg.Error as exc:
            where = exc.diag.column_name if sqlstate == "23502" else exc.diag.constraint_name
            got = (exc.sqlstate, where or "")
            if got != (sqlstate, name):
                problems.append(f"{label}: expected {(sqlstate, name)}, got {got}: {exc}")
        else:
            problems.append(f"{label}: accepted")
    assert problems == []


_BAD_POSITIONS: list[tuple[str, dict[str, Any], str, str]] = [
    ("negative quantity", {"quantity": Decimal("-1")}, "23514", "positions_entry_request"),
    ("zero quantity", {"quantity": Decimal("0")}, "23514", "positions_entry_request"),
    ("negative entry", {"entry_quantity": Decimal("-0.1")}, "23514",
     "positions_amounts_nonnegative"),
    ("negative stop", {"stop_loss_price": Decimal("-5")}, "23514", "positions_risk_positive"),
    ("unknown side", {"side": "up"}, "23514", "positions_side_check"),
    ("buy is not a position side", {"side": "buy"}, "23514", "positions_side_check"),
    ("symbol lowercase", {"symbol": "btcusdt"}, "23514", "positions_symbol_format"),
    ("symbol with dash", {"symbol": "BTC-USDT"}, "23514", "positions_symbol_format"),
    ("symbol too short", {"symbol": "B"}, "23514", "positions_symbol_format"),
    ("symbol too long", {"symbol": "B" * 21}, "22001", ""),
    ("NULL symbol", {"symbol": None}, "23502", "symbol"),
    ("NULL side", {"side": None}, "23502", "side"),
    ("NULL user", {"user_id": None}, "23502", "user_id"),
    ("NULL signal", {"signal_id": None}, "23502", "signal_id"),
    ("unknown signal", {"signal_id": uuid.uuid4()}, "23503", "positions_signal_id_fkey"),
]  # fmt: skip


def test_bad_positions_rejected(conn: Conn, owner: Owner) -> None:
    _check_rejections(conn, _BAD_POSITIONS, lambda **kw: insert_position(conn, owner, **kw))
    assert conn.execute("SELECT count(*) FROM positions").fetchone() == (0,)
    assert _event_count(conn) == 0


_BAD_ORDERS: list[tuple[str, dict[str, Any], str, str]] = [
    ("negative quantity", {"quantity": Decimal("-1")}, "23514", "orders_amounts"),
    ("zero price", {"price": Decimal("0")}, "23514", "orders_amounts"),
    ("negative filled", {"filled_quantity": Decimal("-0.1")}, "23514", "orders_amounts"),
    ("unknown side", {"side": "long"}, "23514", "orders_side_check"),
    ("unknown type", {"type": "stop"}, "23514", "orders_type_check"),
    ("unknown purpose", {"purpose": "hedge"}, "23514", "orders_purpose_check"),
    ("client id with space", {"client_order_id": "bad id"}, "23514",
     "orders_client_order_id_format"),
    ("client id with bang", {"client_order_id": "bad!"}, "23514", "orders_client_order_id_format"),
    ("client id too long", {"client_order_id": "x" * 37}, "23514",
     "orders_client_order_id_format"),
    ("NULL quantity", {"quantity": None}, "23502", "quantity"),
    ("NULL symbol", {"symbol": None}, "23502", "symbol"),
    ("NULL type", {"type": None}, "23502", "type"),
]  # fmt: skip


def test_bad_orders_rejected(conn: Conn, owner: Owner) -> None:
    position_id = insert_position(conn, owner)
    _check_rejections(conn, _BAD_ORDERS, lambda **kw: _insert_order(conn, owner, position_id, **kw))
    assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)


def test_client_order_id_is_unique_and_36_chars_allowed(conn: Conn, owner: Owner) -> None:
    position_id = insert_position(conn, owner)
    longest = "A-z_0" + "9" * 31
    _insert_order(conn, owner, position_id, client_order_id=longest)
    other = insert_position(conn, owner)
    exc = _expect_error("23505", lambda: _insert_order(conn, owner, other, client_order_id=longest))
    assert exc.diag.constraint_name == "uq_orders_client_order_id"
    # NULL is not an id: many orders may have none yet.
    _insert_order(conn, owner, position_id, client_order_id=None)
    _insert_order(conn, owner, position_id, client_order_id=None)
    assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)


_BAD_TRADES: list[tuple[str, dict[str, Any], str, str]] = [
    ("negative quantity", {"quantity": Decimal("-1")}, "23514", "trades_amounts"),
    ("zero price", {"price": Decimal("0")}, "23514", "trades_amounts"),
    ("negative fee", {"fee": Decimal("-0.1")}, "23514", "trades_amounts"),
    ("unknown side", {"side": "long"}, "23514", "trades_side"),
    ("NULL price", {"price": None}, "23502", "price"),
    ("NULL executed_at", {"executed_at": None}, "23502", "executed_at"),
    ("NULL value", {"value": None}, "23502", "value"),
]  # fmt: skip


def test_bad_trades_rejected(conn: Conn, owner: Owner) -> None:
    position_id = insert_position(conn, owner)
    order_id = _insert_order(conn, owner, position_id)
    _check_rejections(
        conn, _BAD_TRADES, lambda **kw: _insert_trade(conn, order_id, position_id, **kw)
    )
    assert conn.execute("SELECT count(*) FROM trades").fetchone() == (0,)


def test_each_exchange_fill_recorded_once(conn: Conn, owner: Owner) -> None:
    position_id = insert_position(conn, owner)
    order_id = _insert_order(conn, owner, position_id)
    other_order = _insert_order(conn, owner, position_id)
    _insert_trade(conn, order_id, position_id, binance_trade_id="42")
    exc = _expect_error(
        "23505", lambda: _insert_trade(conn, order_id, position_id, binance_trade_id="42")
    )
    assert exc.diag.constraint_name == "uq_trades_order_trade"
    # The same exchange trade id on another order is another fill.
    _insert_trade(conn, other_order, position_id, binance_trade_id="42")
    rows = conn.execute(
        "SELECT count(*), count(DISTINCT order_id) FROM trades WHERE binance_trade_id = '42'"
    ).fetchone()
    assert rows == (2, 2)
    # A rejected fill leaves no audit row behind.
    assert conn.execute("SELECT count(*) FROM position_events WHERE kind = 'trade'").fetchone() == (
        2,
    )


def test_symbols_and_sides_at_the_edges_are_accepted(conn: Conn, owner: Owner) -> None:
    for symbol, side in itertools.product(["BT", "1000SHIBUSDT", "A" * 20], ["long", "short"]):
        insert_position(conn, owner, symbol=symbol, side=side)
    assert conn.execute("SELECT count(*) FROM positions").fetchone() == (6,)
