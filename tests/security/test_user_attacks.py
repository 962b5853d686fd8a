"""One test per way a user was found to reach money or rows that are not theirs, each tried
as an end user (``authenticated`` with a JWT, as through PostgREST) against another user and
against the platform, on both database shapes. Each must be refused and write nothing."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.support import Owner, act_as, insert_position, seed_owner

Conn = psycopg.Connection[Any]
D = Decimal


def _open(conn: Conn, owner: Owner, *, held: str = "1", **extra: Any) -> uuid.UUID:
    """A position the worker has entered (written as the owner)."""
    pid = insert_position(conn, owner, **extra)
    for status in ("submitting", "open"):
        conn.execute(
            "UPDATE positions SET status = %s, held_quantity = %s WHERE id = %s",
            (status, D(held), pid),
        )
    return pid


def _outcome(conn: Conn, sql: str, *args: Any) -> str:
    try:
        with conn.transaction():
            cur = conn.execute(sql, args)
            return f"rows={cur.rowcount}"
    except psycopg.Error as exc:
        return f"{exc.sqlstate}: {exc.diag.message_primary}"


def _user(db_url: str, owner: Owner, role: str = "authenticated") -> Conn:
    conn = psycopg.connect(db_url, autocommit=True)
    act_as(conn, owner.user_id, role=role)
    return conn


def _everything(conn: Conn) -> list[Any]:
    """Every row a user could have changed, as the owner sees it."""
    rows: list[Any] = []
    for table in ("positions", "orders", "trades", "position_requests", "position_events"):
        rows += conn.execute(f"SELECT '{table}', t::text FROM {table} t ORDER BY 2").fetchall()
    return rows


@pytest.fixture
def a(owner_conn: Conn) -> Owner:
    return seed_owner(owner_conn)


@pytest.fixture
def b(owner_conn: Conn) -> Owner:
    return seed_owner(owner_conn)


def test_paper_position_cannot_be_turned_into_a_live_holding(
    db_url: str, owner_conn: Conn, a: Owner
) -> None:
    """Set is_paper_trade=false and held_quantity=2 on one's own paper position, then ask for
    an exit: the worker would sell 2 BTC of a real account that nobody bought."""
    pid = _open(owner_conn, a, is_paper_trade=True)
    before = _everything(owner_conn)
    with _user(db_url, a) as user:
        outcomes = [
            _outcome(user, "UPDATE positions SET is_paper_trade = false WHERE id = %s", pid),
            _outcome(user, "UPDATE positions SET held_quantity = 2 WHERE id = %s", pid),
            _outcome(user, "SELECT request_position_exit(%s, 2)", pid),
        ]
    assert outcomes == [
        "42501: permission denied for table positions",
        "42501: permission denied for table positions",
        "PW013: exit quantity 2 is more than the 1.00000000 held",
    ]
    assert _everything(owner_conn) == before


@pytest.mark.parametrize("on", ["own position", "another user's position"])
def test_users_cannot_insert_orders(
    db_url: str, owner_conn: Conn, a: Owner, b: Owner, on: str
) -> None:
    """A 'created' order row on a live position was sent by the reconciler: a BUY of 30 ETH.
    Orders are the worker's record alone (docs/security.md)."""
    pid = _open(owner_conn, a if on == "own position" else b, symbol="ETHUSDT")
    before = _everything(owner_conn)
    with _user(db_url, a) as user:
        outcome = _outcome(
            user,
            "INSERT INTO orders (position_id, user_id, client_order_id, symbol, side, type, "
            "quantity, status, purpose) VALUES (%s, %s, %s, 'ETHUSDT', 'buy', 'market', 30, "
            "'created', 'entry')",
            pid, a.user_id, "pw-e" + uuid.uuid4().hex,
        )  # fmt: skip
    assert outcome == "42501: permission denied for table orders"
    assert _everything(owner_conn) == before


@pytest.mark.parametrize("role", ["authenticated", "anon"])
def test_users_cannot_truncate(db_url: str, owner_conn: Conn, a: Owner, role: str) -> None:
    _open(owner_conn, a)
    before = _everything(owner_conn)
    with _user(db_url, a, role) as user:
        outcomes = {
            t: _outcome(user, f"TRUNCATE {t} CASCADE")
            for t in ("positions", "orders", "trades", "position_events", "position_requests",
                      "signals", "traders", "user_limits")
        }  # fmt: skip
    assert set(outcomes.values()) == {"42501: permission denied for table " + t for t in outcomes}
    assert _everything(owner_conn) == before


@pytest.mark.parametrize("status", ["submitting", "closing", "closed", "failed"])
def test_users_cannot_move_their_own_position(
    db_url: str, owner_conn: Conn, a: Owner, status: str
) -> None:
    pid = _open(owner_conn, a)
    before = _everything(owner_conn)
    with _user(db_url, a) as user:
        outcome = _outcome(user, "UPDATE positions SET status = %s WHERE id = %s", status, pid)
    assert outcome == "42501: permission denied for table positions"
    assert _everything(owner_conn) == before


@pytest.mark.parametrize(
    "column",
    ["is_paper_trade", "held_quantity", "entry_price", "exit_quantity", "realized_pnl",
     "fees_paid", "status", "symbol", "side", "user_id", "requested_quantity", "limit_price",
     "protection", "protection_reason"],
)  # fmt: skip
def test_after_insert_only_risk_columns_and_metadata_change(
    db_url: str, owner_conn: Conn, a: Owner, b: Owner, column: str
) -> None:
    pid = _open(owner_conn, a)
    value: Any = {
        "is_paper_trade": True, "status": "closing", "symbol": "ETHUSDT", "side": "short",
        "user_id": b.user_id, "protection": "exchange", "protection_reason": "mine",
    }.get(column, D("2"))  # fmt: skip
    with _user(db_url, a) as user:
        refused = _outcome(user, f"UPDATE positions SET {column} = %s WHERE id = %s", value, pid)
        allowed = _outcome(
            user,
            "UPDATE positions SET stop_loss_price = 1, take_profit_price = 2, "
            "max_loss_usdt = 3, metadata = '{\"k\": 1}' WHERE id = %s",
            pid,
        )
    assert refused == "42501: permission denied for table positions"
    assert allowed == "rows=1"


def test_users_cannot_say_where_their_protection_is(
    db_url: str, owner_conn: Conn, a: Owner
) -> None:
    """positions.protection (0015) is the worker's word: a user claiming 'exchange' for a
    position the worker protects (or the reverse) is refused at insert too."""
    with _user(db_url, a) as user:
        refused = _outcome(
            user,
            "INSERT INTO positions (user_id, trader_id, signal_id, symbol, side, status,"
            " requested_quantity, protection) VALUES (%s, %s, %s, 'BTCUSDT', 'long',"
            " 'created', 1, 'exchange')",
            a.user_id, a.trader_id, a.signal_id,
        )  # fmt: skip
    assert refused == "42501: permission denied for table positions"


def test_a_chosen_position_id_sharing_another_users_prefix_does_no_harm(
    db_url: str, owner_conn: Conn, a: Owner, b: Owner
) -> None:
    """Users may choose positions.id; client order ids do not derive from it (they come
    from the order row's own id, which only the worker writes), so sharing another
    position's 24 first hex digits takes nothing from it."""
    victim = _open(owner_conn, b)
    twin = uuid.UUID(victim.hex[:24] + uuid.uuid4().hex[24:])
    with _user(db_url, a) as user:
        assert insert_position(user, a, id=twin) == twin
    from worker.execution.client_ids import client_order_id

    ids = {client_order_id(uuid.uuid4(), "scale_in") for _ in range(3)}
    assert not any(victim.hex[:24] in i or twin.hex[:24] in i for i in ids)


@pytest.mark.parametrize("reason", ["ai", "operator", "stop_loss", "take_profit", "max_loss"])
def test_reserved_reasons_are_the_platforms(
    db_url: str, owner_conn: Conn, a: Owner, reason: str
) -> None:
    pid = _open(owner_conn, a)
    before = _everything(owner_conn)
    with _user(db_url, a) as user:
        exit_ = _outcome(user, "SELECT request_position_exit(%s, NULL, %s)", pid, reason)
        scale = _outcome(user, "SELECT request_position_scale_in(%s, 1, NULL, %s)", pid, reason)
    message = f"PW011: reason {reason} is reserved to the platform: end users ask with reason user"
    assert (exit_, scale) == (message, message)
    assert _everything(owner_conn) == before
    with _user(db_url, a, "service_role") as platform:
        assert _outcome(platform, "SELECT request_position_exit(%s, NULL, %s)", pid, reason) == (
            "rows=1"
        )


def test_a_role_inheriting_authenticated_acts_only_on_its_own(
    db_url: str, owner_conn: Conn, pg_admin_url: str, a: Owner, b: Owner
) -> None:
    """A platform adds a tier role that inherits authenticated: it is still an end user
    (allow-list, not deny-list)."""
    tier = f"pw_tier_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {tier} NOLOGIN INHERIT IN ROLE authenticated")
        admin.execute(f"GRANT {tier} TO {owner_conn.info.user}")
    try:
        victim = _open(owner_conn, b)
        mine = _open(owner_conn, a)
        before = _everything(owner_conn)
        with _user(db_url, a, tier) as user:
            outcomes = [
                _outcome(user, "SELECT request_position_exit(%s)", victim),
                _outcome(user, "SELECT request_position_scale_in(%s, 1)", victim),
                _outcome(user, "SELECT request_position_exit(%s, NULL, 'operator')", mine),
            ]
        assert outcomes == [
            f"PW010: position {victim} not found",
            f"PW010: position {victim} not found",
            "PW011: reason operator is reserved to the platform: end users ask with reason user",
        ]
        assert _everything(owner_conn) == before
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f"DROP ROLE {tier}")


def test_operator_role_acts_on_any_position(
    db_url: str, owner_conn: Conn, pg_admin_url: str, b: Owner
) -> None:
    login = f"pw_ops_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {login} LOGIN IN ROLE position_worker_operator")
    try:
        victim = _open(owner_conn, b)
        url = psycopg.conninfo.make_conninfo(db_url, user=login)
        with psycopg.connect(url, autocommit=True) as ops:
            assert (
                _outcome(ops, "SELECT request_position_exit(%s, NULL, 'operator')", victim)
                == "rows=1"
            )
            seen = ops.execute("SELECT count(*) FROM positions").fetchone()
            assert seen == (1,)
            ops.execute(
                "INSERT INTO user_limits (user_id, max_open_positions) VALUES (%s, 3)",
                (b.user_id,),
            )
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f"DROP OWNED BY {login}")
            admin.execute(f"DROP ROLE {login}")


def test_sizes_are_bounded(db_url: str, owner_conn: Conn, a: Owner) -> None:
    pid = _open(owner_conn, a)
    big = '{"x": "' + "a" * (20 * 1024 * 1024) + '"}'
    with _user(db_url, a) as user:
        outcomes = [
            _outcome(user, "UPDATE positions SET metadata = %s::jsonb WHERE id = %s", big, pid),
            _outcome(user, "UPDATE traders SET name = %s WHERE id = %s", "n" * 201, a.trader_id),
        ]
        fits = _outcome(
            user, "UPDATE positions SET metadata = %s::jsonb WHERE id = %s",
            '{"x": "' + "a" * 60000 + '"}', pid,
        )  # fmt: skip
    assert [o.split(":")[0] for o in outcomes] == ["23514", "23514"]
    assert "positions_metadata_size" in outcomes[0] and "traders_name_size" in outcomes[1]
    assert fits == "rows=1"
    with _user(db_url, a) as user, pytest.raises(psycopg.errors.CheckViolation):
        insert_position(user, a, metadata=Jsonb({"x": "a" * 70000}))


@pytest.mark.parametrize(
    ("sql", "args"),
    [
        ("SELECT request_position_exit(%s, %s)", ("0.000000005",)),
        ("SELECT request_position_exit(%s, %s)", ("0.123456789",)),
        ("SELECT request_position_scale_in(%s, %s)", ("0.000000005",)),
        ("SELECT request_position_scale_in(%s, NULL, %s)", ("10.000000001",)),
    ],
)
def test_amounts_with_more_than_8_decimals_are_refused_not_rounded(
    db_url: str, owner_conn: Conn, a: Owner, sql: str, args: tuple[str, ...]
) -> None:
    pid = _open(owner_conn, a)
    before = _everything(owner_conn)
    with _user(db_url, a) as user:
        outcome = _outcome(user, sql, pid, *(D(x) for x in args))
    assert outcome.startswith("PW013: ") and "more than 8 decimals" in outcome
    assert _everything(owner_conn) == before


@pytest.mark.parametrize("column", ["requested_quantity", "requested_quote"])
def test_an_entry_with_more_than_8_decimals_is_refused(
    db_url: str, owner_conn: Conn, a: Owner, column: str
) -> None:
    before = _everything(owner_conn)
    extra: dict[str, Any] = {"quantity": None, column: D("0.000000005")}
    with _user(db_url, a) as user, pytest.raises(psycopg.Error) as info:
        insert_position(user, a, **extra)
    assert info.value.sqlstate == "PW013"
    assert _everything(owner_conn) == before


def test_users_cannot_read_the_workers_delivery_state(
    db_url: str, owner_conn: Conn, a: Owner, b: Owner
) -> None:
    """position_events.last_error carries internal SQL and other positions' client order
    ids; users read the audit record through position_audit."""
    pid = insert_position(owner_conn, a)
    owner_conn.execute(
        "UPDATE position_events SET last_error = 'duplicate key pw-x-secret', attempts = 3"
        " WHERE position_id = %s",
        (pid,),
    )
    with _user(db_url, a) as user:
        hidden = [
            _outcome(user, f"SELECT {c} FROM position_events")
            for c in ("last_error", "attempts", "processed_at", "dead_at", "available_at", "*")
        ]
        audit = user.execute("SELECT * FROM position_audit").fetchall()
        described = user.execute("SELECT * FROM position_audit LIMIT 0").description
        assert described is not None
        names = [d.name for d in described]
    assert set(hidden) == {"42501: permission denied for table position_events"}
    assert len(audit) == 1 and "last_error" not in names and "attempts" not in names
    with _user(db_url, b) as other:
        assert other.execute("SELECT count(*) FROM position_audit").fetchone() == (0,)
