"""Benchmark data: positions parked in ``monitoring`` and a bulk backlog of state changes."""

from __future__ import annotations

import uuid

import psycopg

_SETUP = """
INSERT INTO auth.users (id) VALUES (%(user)s);
INSERT INTO traders (id, user_id) VALUES (%(trader)s, %(user)s);
INSERT INTO signals (id, user_id, trader_id) VALUES (%(signal)s, %(user)s, %(trader)s);
"""


def prepare_database(db_url: str, positions: int) -> None:
    """``positions`` positions in ``monitoring``; their setup events marked handled."""
    ids = {"user": uuid.uuid4(), "trader": uuid.uuid4(), "signal": uuid.uuid4()}
    with psycopg.connect(db_url, autocommit=True) as conn:
        for statement in _SETUP.strip().splitlines():
            conn.execute(statement.encode(), ids)
        conn.execute(
            "INSERT INTO positions (user_id, trader_id, signal_id, symbol, side, status,"
            " requested_quantity) SELECT %(user)s, %(trader)s, %(signal)s, 'BTCUSDT', 'long',"
            " 'created', 1 FROM generate_series(1, %(n)s)",
            {**ids, "n": positions},
        )
        for status in ("submitting", "open", "monitoring"):
            conn.execute("UPDATE positions SET status = %s", (status,))
        conn.execute("UPDATE position_events SET processed_at = now()")
        conn.execute("VACUUM ANALYZE")


def backlog(db_url: str, events: int) -> int:
    """Commit about ``events`` state changes with nobody listening (bulk statements)."""
    committed = 0
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM positions").fetchone()
        per_statement = int(row[0]) if row else 0
        while committed < events:
            conn.execute(
                "UPDATE positions SET status = CASE status WHEN 'monitoring' THEN 'closing'"
                " ELSE 'monitoring' END"
            )
            committed += per_statement
    return committed
