"""Helpers shared by the integration tests: seed rows, act as a user."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from worker.db.migrate import default_schema_dir


@dataclass(frozen=True)
class Owner:
    user_id: uuid.UUID
    trader_id: uuid.UUID
    signal_id: uuid.UUID


def seed_owner(conn: psycopg.Connection[Any]) -> Owner:
    """A user with a trader and a signal, inserted as the owner (bypasses RLS)."""
    user_id, trader_id, signal_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    conn.execute("INSERT INTO auth.users (id, email) VALUES (%s, %s)", (user_id, f"{user_id}@x"))
    conn.execute("INSERT INTO traders (id, user_id) VALUES (%s, %s)", (trader_id, user_id))
    conn.execute(
        "INSERT INTO signals (id, user_id, trader_id, symbol, status) "
        "VALUES (%s, %s, %s, 'BTCUSDT', 'active')",
        (signal_id, user_id, trader_id),
    )
    return Owner(user_id, trader_id, signal_id)


def insert_position(
    conn: psycopg.Connection[Any],
    owner: Owner,
    *,
    symbol: str = "BTCUSDT",
    side: str = "long",
    quantity: Decimal | None = Decimal("0.5"),
    **extra: Any,
) -> uuid.UUID:
    columns = {
        "user_id": owner.user_id,
        "trader_id": owner.trader_id,
        "signal_id": owner.signal_id,
        "symbol": symbol,
        "side": side,
        "status": "created",
        "requested_quantity": quantity,
        **extra,
    }
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    row = conn.execute(
        f"INSERT INTO positions ({names}) VALUES ({marks}) RETURNING id",
        list(columns.values()),
    ).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def act_as(
    conn: psycopg.Connection[Any], user_id: uuid.UUID | None, role: str = "authenticated"
) -> None:
    """Switch this connection to an end user's role and JWT claims (Supabase-style)."""
    claims = json.dumps({"sub": str(user_id), "role": role}) if user_id else ""
    conn.execute("SELECT set_config('request.jwt.claims', %s, false)", (claims,))
    conn.execute(f"SET ROLE {role}")


def schema_on_disk() -> Path:
    """The shipped migrations' directory (to copy and edit): an installed or checked-out
    package is a directory on disk, not a zip (default_schema_dir gives a Traversable)."""
    shipped = default_schema_dir()
    assert isinstance(shipped, Path), f"the migrations are not a directory on disk: {shipped!r}"
    return shipped


def waiting_on_a_lock(db_url: str, query_part: str) -> bool:
    """Whether a session whose statement contains ``query_part`` waits for a lock now."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND position(%s in query) > 0",
            (query_part,),
        ).fetchone()
    return bool(row and row[0])
