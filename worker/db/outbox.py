"""The outbox side of ``position_events``: claim, finish, fail, replay. Thin, async.

Driver errors are translated into :class:`worker.errors.DatabaseUnavailable` here, so the
pipeline above never sees psycopg's exceptions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from worker.db.queries import q
from worker.errors import DatabaseUnavailable


@dataclass(frozen=True, slots=True)
class FailResult:
    attempts: int
    dead: bool


@asynccontextmanager
async def translated_errors() -> AsyncIterator[None]:
    """Turn connection-level driver errors into DatabaseUnavailable."""
    try:
        yield
    except (psycopg.OperationalError, psycopg.errors.AdminShutdown) as exc:
        raise DatabaseUnavailable(str(exc).strip() or type(exc).__name__) from exc
    except PoolTimeout as exc:
        raise DatabaseUnavailable(f"no database connection available: {exc}") from exc


class Outbox:
    """Claims and settles events for one worker (``owner`` names it in leases)."""

    def __init__(self, pool: AsyncConnectionPool[Any], owner: str, lease_seconds: float) -> None:
        self.pool, self.owner, self.lease_seconds = pool, owner, lease_seconds

    async def claim(self, limit: int) -> list[dict[str, Any]]:
        async with translated_errors(), self.pool.connection() as conn, conn.transaction():
            await conn.execute(q("claim_lock"))
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                q("claim_events"),
                {"limit": limit, "lease_seconds": self.lease_seconds, "owner": self.owner},
            )
            rows: list[dict[str, Any]] = await cur.fetchall()
        rows.sort(key=lambda r: int(r["id"]))
        return rows

    async def mark_processed(self, ids: Sequence[int]) -> None:
        if ids:
            await self._execute("mark_processed", {"ids": list(ids), "owner": self.owner})

    async def release(self, ids: Sequence[int]) -> None:
        if ids:
            await self._execute("release", {"ids": list(ids), "owner": self.owner})

    async def mark_failed(
        self, event_id: int, error: str, delay: float, max_attempts: int
    ) -> FailResult:
        params = {
            "id": event_id,
            "error": error[:2000],
            "delay": delay,
            "max_attempts": max_attempts,
            "owner": self.owner,
        }
        row = await self._fetchone("mark_failed", params)
        if row is None:  # lease lost meanwhile: someone else has it now
            return FailResult(attempts=0, dead=False)
        return FailResult(attempts=int(row[0]), dead=bool(row[1]))

    async def defer(self, event_id: int, delay: float, reason: str) -> None:
        params = {"id": event_id, "delay": delay, "error": reason[:2000], "owner": self.owner}
        await self._execute("defer_event", params)

    async def mark_dead(self, event_id: int, error: str) -> None:
        await self._execute("mark_dead", {"id": event_id, "error": error[:2000]})

    async def _execute(self, name: str, params: dict[str, Any]) -> None:
        async with translated_errors(), self.pool.connection() as conn:
            await conn.execute(q(name), params)

    async def _fetchone(self, name: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        async with translated_errors(), self.pool.connection() as conn:
            cur = await conn.execute(q(name), params)
            row: tuple[Any, ...] | None = await cur.fetchone()
            return row


async def replay(pool: AsyncConnectionPool[Any], event_id: int | None) -> list[int]:
    """Re-queue one dead event (or all of them with ``None``) and wake the workers."""
    async with translated_errors(), pool.connection() as conn:
        if event_id is None:
            cur = await conn.execute(q("replay_all_dead"))
        else:
            cur = await conn.execute(q("replay_event"), {"id": event_id})
        ids = [int(r[0]) for r in await cur.fetchall()]
        await conn.execute(q("wake_workers"))
    return sorted(ids)
