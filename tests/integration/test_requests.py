"""request_position_exit / request_position_scale_in: who may call them, and bad input.

Each refusal is a clear error at the SQL function and writes nothing (no request row, no
event) so nothing can reach the exchange."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from tests.support import Owner, act_as, insert_position, seed_owner

D = Decimal
Conn = psycopg.Connection[Any]


@pytest.fixture(params=["plain", "supabase"])
def db_shape(request: pytest.FixtureRequest) -> str:
    """Every test here runs on a plain PostgreSQL and on a Supabase-shaped database."""
    return str(request.param)


@pytest.fixture
def conn(db_url: str) -> Iterator[Conn]:
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


def open_position(
    conn: Conn, owner: Owner, status: str = "monitoring", held: str = "1"
) -> uuid.UUID:
    pid = insert_position(conn, owner)
    for step in ("submitting", "open", "monitoring", "closing", "closed"):
        conn.execute(
            "UPDATE positions SET status = %s, held_quantity = %s WHERE id = %s",
            (step, D(held), pid),
        )
        if step == status:
            break
    return pid


def counts(conn: Conn) -> tuple[int, int]:
    with psycopg.connect(conn.info.dsn) as owner:  # as the owner, whoever conn acts as
        return _counts(owner)


def _counts(conn: Conn) -> tuple[int, int]:
    requests = conn.execute("SELECT count(*) FROM position_requests").fetchone()
    events = conn.execute("SELECT count(*) FROM position_events WHERE kind = 'request'").fetchone()
    return (int(requests[0]) if requests else -1, int(events[0]) if events else -1)


def refused(conn: Conn, sql: str, *args: Any) -> tuple[str | None, str]:
    before = counts(conn)
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, args)
    conn.execute("RESET ROLE")
    assert counts(conn) == before, "a refused request wrote something"
    return info.value.sqlstate, str(info.value.diag.message_primary)


def test_owner_can_request_exit_and_scale_in_of_own_position(conn: Conn) -> None:
    owner = seed_owner(conn)
    pid = open_position(conn, owner)
    act_as(conn, owner.user_id)
    exit_id = conn.execute("SELECT request_position_exit(%s, 0.4)", (pid,)).fetchone()
    scale_id = conn.execute("SELECT request_position_scale_in(%s, NULL, 50)", (pid,)).fetchone()
    mine = conn.execute("SELECT kind, quantity, quote_quantity, reason FROM position_requests"
                        " ORDER BY created_at").fetchall()  # fmt: skip
    conn.execute("RESET ROLE")
    assert exit_id and scale_id
    assert mine == [("exit", D("0.4"), None, "user"), ("scale_in", None, D("50"), "user")]
    events = conn.execute(
        "SELECT new_status, actor_role, actor_uid FROM position_events WHERE kind = 'request'"
        " ORDER BY id"
    ).fetchall()
    assert events == [("exit", "authenticated", owner.user_id),
                      ("scale_in", "authenticated", owner.user_id)]  # fmt: skip


def test_someone_elses_position_looks_like_no_position(conn: Conn) -> None:
    a, b = seed_owner(conn), seed_owner(conn)
    pid = open_position(conn, b)
    act_as(conn, a.user_id)
    code, message = refused(conn, "SELECT request_position_exit(%s)", pid)
    assert (code, message) == ("PW010", f"position {pid} not found")
    act_as(conn, a.user_id)
    code, _ = refused(conn, "SELECT request_position_scale_in(%s, 1)", pid)
    assert code == "PW010"


def test_anon_cannot_call_the_functions(conn: Conn) -> None:
    pid = open_position(conn, seed_owner(conn))
    act_as(conn, None, role="anon")
    code, _ = refused(conn, "SELECT request_position_exit(%s)", pid)
    assert code == "42501"  # permission denied


@pytest.mark.parametrize("status", ["created", "closing", "closed", "failed"])
def test_exit_of_a_position_that_is_not_open_is_refused(conn: Conn, status: str) -> None:
    owner = seed_owner(conn)
    if status == "failed":
        pid = insert_position(conn, owner)
        conn.execute("UPDATE positions SET status = 'failed' WHERE id = %s", (pid,))
    elif status == "created":
        pid = insert_position(conn, owner)
    else:
        pid = open_position(conn, owner, status=status)
    code, message = refused(conn, "SELECT request_position_exit(%s)", pid)
    assert code == "PW012"
    assert f"is {status}" in message


def test_only_a_full_exit_may_be_requested_while_the_entry_is_working(conn: Conn) -> None:
    pid = open_position(conn, seed_owner(conn), status="submitting")
    code, message = refused(conn, "SELECT request_position_exit(%s, 0.5)", pid)
    assert code == "PW012"
    assert "only a full exit" in message
    conn.execute("SELECT request_position_exit(%s)", (pid,))
    assert conn.execute(
        "SELECT kind, quantity, status FROM position_requests WHERE position_id = %s", (pid,)
    ).fetchall() == [("exit", None, "pending")]


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [(D("1.5"), "more than the 1.00000000 held"), (D("0"), "must be positive"),
     (D("-1"), "must be positive")],
)  # fmt: skip
def test_exit_quantity_must_be_positive_and_held(conn: Conn, quantity: D, expected: str) -> None:
    pid = open_position(conn, seed_owner(conn))
    code, message = refused(conn, "SELECT request_position_exit(%s, %s)", pid, quantity)
    assert code == "PW013"
    assert expected in message


def test_second_pending_exit_is_refused(conn: Conn) -> None:
    pid = open_position(conn, seed_owner(conn))
    conn.execute("SELECT request_position_exit(%s)", (pid,))
    code, message = refused(conn, "SELECT request_position_exit(%s)", pid)
    assert (code, "already has an exit pending" in message) == ("PW014", True)


@pytest.mark.parametrize(
    ("args", "code"),
    [((None, None), "PW013"), ((D("1"), D("10")), "PW013"), ((D("0"), None), "PW013"),
     ((None, D("-5")), "PW013")],
)  # fmt: skip
def test_scale_in_needs_exactly_one_positive_amount(
    conn: Conn, args: tuple[D | None, D | None], code: str
) -> None:
    pid = open_position(conn, seed_owner(conn))
    got, _ = refused(conn, "SELECT request_position_scale_in(%s, %s, %s)", pid, *args)
    assert got == code


def test_scale_in_on_a_closing_position_is_refused(conn: Conn) -> None:
    pid = open_position(conn, seed_owner(conn), status="closing")
    code, message = refused(conn, "SELECT request_position_scale_in(%s, 1)", pid)
    assert code == "PW012" and "is closing" in message


def test_unknown_reason_is_refused(conn: Conn) -> None:
    pid = open_position(conn, seed_owner(conn))
    code, message = refused(conn, "SELECT request_position_exit(%s, NULL, 'because')", pid)
    assert code == "PW011" and "unknown reason because" in message


def test_users_cannot_write_requests_directly(conn: Conn) -> None:
    owner = seed_owner(conn)
    pid = open_position(conn, owner)
    act_as(conn, owner.user_id)
    code, _ = refused(
        conn,
        "INSERT INTO position_requests (position_id, user_id, kind, reason)"
        " VALUES (%s, %s, 'exit', 'user')",
        pid, owner.user_id,
    )  # fmt: skip
    assert code == "42501"
