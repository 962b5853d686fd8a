"""The reconcile pass's safety-net queries probe each position's own orders, whatever the
planner thinks of the tables' sizes (worker/db/execution.sql, exec_stuck_positions).

The worker's connections prepare a statement run often (psycopg's prepare_threshold) and
PostgreSQL keeps a generic plan for it, made when the tables were small: after a burst of
entries, planned as an anti-join, the stuck-positions check read every order for every
waiting position (1.5-2 s a pass over 10,000 resting paper entries); with ``IN`` for "in
flight", each probe ANDed the bitmap of every order in flight (5 s). Here the plan is made
on a nearly empty table and run on 2,000 resting entries.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg

from tests.support import seed_owner
from worker.db.queries import q

RESTING = 2_000


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def test_the_stuck_positions_check_probes_each_positions_orders_on_a_plan_made_small(
    db_url: str,
) -> None:
    query = q("exec_stuck_positions").replace("%(grace)s", "$1")
    with psycopg.connect(db_url, autocommit=True) as conn:
        owner = seed_owner(conn)
        conn.execute("SET plan_cache_mode = force_generic_plan")  # as a prepared statement
        conn.execute(f"PREPARE stuck (float8) AS {query}")
        conn.execute("EXECUTE stuck(0)")  # planned now, on nearly empty tables
        conn.execute(
            """
            WITH p AS (
              INSERT INTO positions (user_id, trader_id, signal_id, symbol, side, status,
                                     requested_quantity, limit_price, is_paper_trade)
              SELECT %(u)s, %(t)s, %(s)s, 'BTCUSDT', 'long', 'created', 0.1, 50, true
              FROM generate_series(1, %(n)s)
              RETURNING id, user_id),
            x AS (SELECT gen_random_uuid() AS id, p.id AS position_id, p.user_id FROM p)
            INSERT INTO orders (id, position_id, user_id, client_order_id, symbol, side, type,
                                quantity, price, status, purpose, is_paper_trade)
            SELECT x.id, x.position_id, x.user_id, 'pw-e' || replace(x.id::text, '-', ''),
                   'BTCUSDT', 'buy', 'limit', 0.1, 50, 'created', 'entry', true
            FROM x
            """,
            {"u": owner.user_id, "t": owner.trader_id, "s": owner.signal_id, "n": RESTING},
        )
        found = conn.execute("EXECUTE stuck(0)").fetchall()
        row = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE stuck(0)").fetchone()
    assert found == []  # every one has its entry in flight
    assert row is not None
    plan = json.loads(row[0]) if isinstance(row[0], str) else row[0]
    top = plan[0]["Plan"]
    reads = [n for n in nodes(top) if n.get("Relation Name") == "orders"]
    assert reads, top
    for read in reads:  # every read of orders: one position's, by its index
        assert read["Node Type"] != "Seq Scan", read
        assert read.get("Index Name", "idx_orders_position_id") == "idx_orders_position_id"
    assert not any(n["Node Type"] == "BitmapAnd" for n in nodes(top)), "ANDed status bitmap"
