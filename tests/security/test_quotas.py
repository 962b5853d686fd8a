"""Per-user quotas (PW015, nothing written): open positions, pending requests, requests per
minute. Defaults in user_limit_defaults, per-user overrides in user_limits; privileged
callers (the worker's own protection, the platform) are not limited."""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from tests.support import Owner, act_as, insert_position, seed_owner

Conn = psycopg.Connection[Any]


def _counts(conn: Conn, user: uuid.UUID) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM positions WHERE user_id = %(u)s),"
        " (SELECT count(*) FROM position_requests WHERE user_id = %(u)s),"
        " (SELECT count(*) FROM position_events WHERE user_id = %(u)s)",
        {"u": user},
    ).fetchone()
    assert row is not None
    return tuple(row)


def _open(conn: Conn, owner: Owner) -> uuid.UUID:
    pid = insert_position(conn, owner)
    conn.execute("UPDATE positions SET status = 'submitting' WHERE id = %s", (pid,))
    conn.execute("UPDATE positions SET status = 'open', held_quantity = 1 WHERE id = %s", (pid,))
    return pid


@pytest.fixture
def a(owner_conn: Conn) -> Owner:
    return seed_owner(owner_conn)


def _set_limits(conn: Conn, user: uuid.UUID, **limits: int) -> None:
    names = ", ".join(limits)
    marks = ", ".join(["%s"] * len(limits))
    conn.execute(
        f"INSERT INTO user_limits (user_id, {names}) VALUES (%s, {marks})",
        (user, *limits.values()),
    )


def test_defaults_are_documented_values(owner_conn: Conn) -> None:
    row = owner_conn.execute(
        "SELECT max_open_positions, max_pending_requests, max_requests_per_minute"
        " FROM user_limit_defaults"
    ).fetchone()
    assert row == (50, 10, 30)


def test_open_positions_quota(db_url: str, owner_conn: Conn, a: Owner) -> None:
    _set_limits(owner_conn, a.user_id, max_open_positions=2)
    closed = _open(owner_conn, a)
    owner_conn.execute("UPDATE positions SET status = 'closing' WHERE id = %s", (closed,))
    owner_conn.execute("UPDATE positions SET status = 'closed' WHERE id = %s", (closed,))
    with psycopg.connect(db_url, autocommit=True) as user:
        act_as(user, a.user_id)
        insert_position(user, a)
        insert_position(user, a)  # a closed one does not count: 2 live now
        before = _counts(owner_conn, a.user_id)
        with pytest.raises(psycopg.Error) as info:
            insert_position(user, a)
    assert info.value.sqlstate == "PW015"
    assert "open positions (limit 2)" in str(info.value)
    assert _counts(owner_conn, a.user_id) == before
    # an operator raises it for this user only; the platform is not limited
    owner_conn.execute("UPDATE user_limits SET max_open_positions = 3 WHERE user_id = %s",
                       (a.user_id,))  # fmt: skip
    with psycopg.connect(db_url, autocommit=True) as user:
        act_as(user, a.user_id)
        insert_position(user, a)
        act_as(user, a.user_id, role="service_role")
        insert_position(user, a)


def test_concurrent_inserts_cannot_both_take_the_last_place(
    db_url: str, owner_conn: Conn, a: Owner
) -> None:
    _set_limits(owner_conn, a.user_id, max_open_positions=1)
    barrier = threading.Barrier(2)
    results: list[str] = []

    def insert() -> None:
        with psycopg.connect(db_url) as conn:
            act_as(conn, a.user_id)
            conn.commit()
            barrier.wait(10)
            try:
                insert_position(conn, a)
                conn.commit()
                results.append("ok")
            except psycopg.Error as exc:
                results.append(str(exc.sqlstate))

    threads = [threading.Thread(target=insert) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["PW015", "ok"]


def test_pending_requests_quota(db_url: str, owner_conn: Conn, a: Owner) -> None:
    _set_limits(owner_conn, a.user_id, max_pending_requests=2)
    pid = _open(owner_conn, a)
    with psycopg.connect(db_url, autocommit=True) as user:
        act_as(user, a.user_id)
        user.execute("SELECT request_position_scale_in(%s, 1)", (pid,))
        user.execute("SELECT request_position_scale_in(%s, 1)", (pid,))
        before = _counts(owner_conn, a.user_id)
        with pytest.raises(psycopg.Error) as info:
            user.execute("SELECT request_position_exit(%s)", (pid,))
        assert info.value.sqlstate == "PW015"
        assert "pending requests (limit 2)" in str(info.value)
        assert _counts(owner_conn, a.user_id) == before
        # the worker's own protection is never refused
    owner_conn.execute("SELECT request_position_exit(%s, NULL, 'stop_loss')", (pid,))
    owner_conn.execute("UPDATE position_requests SET status = 'done' WHERE user_id = %s",
                       (a.user_id,))  # fmt: skip
    with psycopg.connect(db_url, autocommit=True) as user:
        act_as(user, a.user_id)
        user.execute("SELECT request_position_scale_in(%s, 1)", (pid,))  # settled: room again


def test_requests_per_minute_quota(db_url: str, owner_conn: Conn, a: Owner) -> None:
    _set_limits(owner_conn, a.user_id, max_requests_per_minute=3, max_pending_requests=100)
    pid = _open(owner_conn, a)
    with psycopg.connect(db_url, autocommit=True) as user:
        act_as(user, a.user_id)
        for _ in range(3):
            user.execute("SELECT request_position_scale_in(%s, 0.5)", (pid,))
        before = _counts(owner_conn, a.user_id)
        with pytest.raises(psycopg.Error) as info:
            user.execute("SELECT request_position_scale_in(%s, 0.5)", (pid,))
    assert info.value.sqlstate == "PW015"
    assert "requests per minute (limit 3)" in str(info.value)
    assert _counts(owner_conn, a.user_id) == before
    # a minute later (the requests age) there is room again
    owner_conn.execute(
        "UPDATE position_requests SET created_at = created_at - interval '61 seconds'"
        " WHERE user_id = %s",
        (a.user_id,),
    )
    with psycopg.connect(db_url, autocommit=True) as user:
        act_as(user, a.user_id)
        user.execute("SELECT request_position_scale_in(%s, %s)", (pid, Decimal("0.5")))


def test_users_read_their_limits_but_cannot_raise_them(
    db_url: str, owner_conn: Conn, a: Owner
) -> None:
    other = seed_owner(owner_conn)
    _set_limits(owner_conn, a.user_id, max_open_positions=5)
    _set_limits(owner_conn, other.user_id, max_open_positions=7)
    with psycopg.connect(db_url, autocommit=True) as user:
        act_as(user, a.user_id)
        assert user.execute("SELECT user_id, max_open_positions FROM user_limits").fetchall() == [
            (a.user_id, 5)
        ]
        for sql in (
            "UPDATE user_limits SET max_open_positions = 1000",
            "INSERT INTO user_limits (user_id, max_open_positions) VALUES (auth.uid(), 1000)",
            "UPDATE user_limit_defaults SET max_open_positions = 1000",
            "DELETE FROM user_limits",
        ):
            with pytest.raises(psycopg.Error) as info:
                user.execute(sql)
            assert info.value.sqlstate == "42501", sql
