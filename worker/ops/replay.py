"""``position-worker replay``: re-queue dead events."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from worker.db.outbox import replay
from worker.settings import Settings


async def replay_events(settings: Settings, event_id: int | None) -> list[int]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.database.url, min_size=1, max_size=1, open=False, kwargs={"autocommit": True}
    )
    await pool.open(wait=True, timeout=settings.database.connect_timeout)
    try:
        return await replay(pool, event_id)
    finally:
        await pool.close()
