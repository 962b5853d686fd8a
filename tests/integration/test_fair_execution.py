"""Fair to every user: one user's flood of positions does not hold up another user's entry,
in the claim (schema/0016: outbox_claim_fair) and in the order a batch is handled in
(worker/pipeline/turns.py); positions overlap, each one's events stay in order."""

from __future__ import annotations

import uuid
from dataclasses import replace
from decimal import Decimal
from typing import Any

import anyio
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.execution_support import exec_settings, wait_status
from tests.pipeline_support import eventually
from tests.support import Owner, insert_position, seed_owner
from worker.app import App
from worker.db.outbox import Outbox
from worker.events import Event
from worker.exchanges.paper import PaperExchange
from worker.exchanges.prices import FixedPrices
from worker.execution.handlers import position_created
from worker.execution.routing import ExchangeRouter
from worker.pipeline.handlers import Registry

pytestmark = pytest.mark.anyio
D = Decimal
FLOOD = 1000


def flood(db_url: str, positions: int = FLOOD) -> Owner:
    """One user's ``positions`` paper positions, committed in one transaction."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        owner = seed_owner(conn)
        conn.execute(
            "INSERT INTO positions (user_id, trader_id, signal_id, symbol, side, status,"
            " requested_quantity, is_paper_trade) SELECT %s, %s, %s, 'BTCUSDT', 'long',"
            " 'created', 0.5, true FROM generate_series(1, %s)",
            (owner.user_id, owner.trader_id, owner.signal_id, positions),
        )
    return owner


def neighbour(db_url: str) -> uuid.UUID:
    """Another user's plain market entry on paper, committed after the flood."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        return insert_position(conn, seed_owner(conn), is_paper_trade=True)


def entered(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM positions WHERE status <> 'created'").fetchone()
    return int(row[0]) if row else 0


def events_of(db_url: str, position_id: uuid.UUID) -> list[int]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT id FROM position_events WHERE position_id = %s ORDER BY id", (position_id,)
        ).fetchall()
    return [int(r[0]) for r in rows]


async def test_a_claim_in_a_backlog_takes_the_other_users_oldest_events_too(db_url: str) -> None:
    flood(db_url)
    pid = neighbour(db_url)
    [created] = events_of(db_url, pid)
    async with AsyncConnectionPool(db_url, kwargs={"autocommit": True}, open=False) as pool:
        outbox = Outbox(pool, lease_seconds=30)
        async with outbox.claim(100) as batch:
            ids = [int(r["id"]) for r in batch.rows]
            assert created in ids  # in the first claim, behind 1,000 older events
            assert len(ids) == 101  # the 100 oldest, and the neighbour's one
            # a second claim meanwhile skips what the first holds, and takes nothing twice
            async with outbox.claim(100) as second:
                again = {int(r["id"]) for r in second.rows}
                assert len(again) == 100 and not again & set(ids)


async def test_a_claim_without_a_backlog_is_the_oldest_events_alone(db_url: str) -> None:
    flood(db_url, 10)
    neighbour(db_url)
    pool = AsyncConnectionPool(db_url, kwargs={"autocommit": True}, open=False)
    async with pool, Outbox(pool, lease_seconds=30).claim(100) as batch:
        assert len(batch.rows) == 11
        assert [r["id"] for r in batch.rows] == sorted(r["id"] for r in batch.rows)


async def test_another_users_entry_is_handled_in_the_first_turns_behind_a_flood(
    db_url: str, redis_url: str
) -> None:
    """User A's 300 paper positions are committed first, then user B's one: B's entry is
    among the first positions handled (a claim of 50 holds it; the batch runs in turns
    across users), not behind A's 300. The worker stops once every entry is done."""
    flood(db_url, 300)
    pid = neighbour(db_url)
    handled: list[str] = []
    neighbour_entered = anyio.Event()

    def record(registry: Registry, _pool: AsyncConnectionPool[Any]) -> None:
        async def entered(event: Event) -> None:
            handled.append(event.position_id)
            if event.position_id == str(pid):
                neighbour_entered.set()

        registry.add("record_entry", position_created, entered)

    base = exec_settings(db_url, redis_url)
    settings = replace(base, pipeline=replace(base.pipeline, batch_size=50))
    paper = PaperExchange(FixedPrices({"BTCUSDT": D("100")}), clock=lambda: 1_760_000_000_000)
    app = App(
        settings, handle_signals=False, router=ExchangeRouter(paper=paper), extra_handlers=record
    )
    async with app.serving():
        with anyio.fail_after(60):
            await neighbour_entered.wait()
        await wait_status(db_url, pid, "open", "monitoring", timeout=20)
        await eventually(lambda: len(handled) == 301, timeout=120)
        await eventually(lambda: entered(db_url) == 301, timeout=60)
    # B's entry was handled with the first claim's batch (first turns: before A's 50th)
    assert handled.index(str(pid)) < settings.pipeline.batch_size
    assert len(set(handled)) == 301  # every entry once
