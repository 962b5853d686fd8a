"""The paper orders bench (``bench --paper-only``) runs its rounds on a real database: every
resting order fills, the balances add up, and the report shows one line per block."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from worker.db.paper_store import PgPaperStore
from worker.ops.bench_paper import START, _seed_users, drive, render

pytestmark = pytest.mark.anyio


async def test_the_paper_bench_rounds_fill_every_order_and_report_per_block(db_url: str) -> None:
    users = _seed_users(db_url)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        db_url, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
    )
    await pool.open()
    try:
        blocks = await drive(PgPaperStore(pool, START), users, orders=400, block=100)
    finally:
        await pool.close()
    assert [b.orders for b in blocks] == [100, 200, 300, 400]
    assert all(b.rss_mb > 0 and b.seconds > 0 for b in blocks)
    with psycopg.connect(db_url) as conn:
        statuses = conn.execute("SELECT status, count(*) FROM paper_orders GROUP BY 1").fetchall()
        locked = conn.execute("SELECT sum(locked) FROM paper_balances").fetchone()
    assert statuses == [("FILLED", 400)]
    assert locked == (Decimal(0),)
    report = render(blocks, blocks)
    assert "last/first block" in report and "PostgreSQL store" in report
