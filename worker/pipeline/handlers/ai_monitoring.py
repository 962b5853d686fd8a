"""AI monitoring start: the request is on ``positions:ai-monitoring`` (published with the
event); this handler moves the position ``open -> monitoring`` once, by compare-and-set, so
a repeat (crash, replay) or a position that moved on meanwhile is a harmless no-op."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg_pool import AsyncConnectionPool

from worker.db.queries import q
from worker.driver_errors import translated_errors
from worker.events import Event


def make_start_monitoring(pool: AsyncConnectionPool[Any], log: Any) -> Any:
    async def start_monitoring(event: Event) -> None:
        async with translated_errors(), pool.connection() as conn:
            cur = await conn.execute(q("start_monitoring"), {"position_id": event.position_id})
            moved = await cur.fetchone() is not None
        if moved:
            log.info("monitoring_started", event_id=event.event_id, position_id=event.position_id)

    return start_monitoring


def make_start_monitoring_many(pool: AsyncConnectionPool[Any], log: Any) -> Any:
    """start_monitoring for many opened positions at once: one statement."""

    async def start_monitoring_many(events: Sequence[Event]) -> dict[int, Exception | None]:
        async with translated_errors(), pool.connection() as conn:
            ids = [event.position_id for event in events]
            cur = await conn.execute(q("start_monitoring_many"), {"position_ids": ids})
            moved = {row[0] for row in await cur.fetchall()}
        for event in events:
            if event.position_id in moved:
                log.info(
                    "monitoring_started", event_id=event.event_id, position_id=event.position_id
                )
        return {event.event_id: None for event in events}

    return start_monitoring_many
