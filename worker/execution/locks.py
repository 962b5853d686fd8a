"""One actor per position: the position's advisory lock, and loading what it holds.

Every action on a position (entry, request, reconcile, protection) runs on one connection
that holds the position's session advisory lock for the whole action, exchange calls
included; a crashed process's lock dies with its connection. The lock is only tried: a
position held elsewhere raises :class:`PositionBusy` at once.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from psycopg_pool import AsyncConnectionPool

from worker.errors import WorkerError
from worker.execution.client_ids import is_worker_order
from worker.execution.context import PositionBusy
from worker.execution.rows import (
    Conn,
    Order,
    Position,
    fetch_all,
    fetch_column,
    fetch_one,
    fetch_value,
)


@asynccontextmanager
async def locked(pool: AsyncConnectionPool[Any], position_id: str) -> AsyncIterator[Conn]:
    """A connection holding the position's lock until the block ends."""
    async with pool.connection() as conn:
        if not await fetch_value(conn, "exec_try_lock_position", position_id=position_id):
            raise PositionBusy(f"position {position_id} is being handled elsewhere")
        try:
            yield conn
        finally:
            await fetch_value(conn, "exec_unlock_position", position_id=position_id)


@asynccontextmanager
async def locked_many(
    pool: AsyncConnectionPool[Any], position_ids: Sequence[str]
) -> AsyncIterator[tuple[Conn, list[str]]]:
    """A connection holding the locks of those of ``position_ids`` nobody else holds (the
    list given with it) until the block ends; the others are left to whoever holds them."""
    async with pool.connection() as conn:
        held = [
            str(i)
            for i in await fetch_column(conn, "exec_try_lock_positions", position_ids=position_ids)
        ]
        try:
            yield conn, held
        finally:
            if held:
                await fetch_column(conn, "exec_unlock_positions", position_ids=held)


async def load_positions(conn: Conn, position_ids: Sequence[str]) -> list[Position]:
    """The positions of ``position_ids`` that exist, in that order."""
    return await fetch_all(conn, Position, "exec_positions", position_ids=list(position_ids))


async def find_position(conn: Conn, position_id: str | uuid.UUID) -> Position | None:
    return await fetch_one(conn, Position, "exec_position", position_id=position_id)


async def load_position(conn: Conn, position_id: str | uuid.UUID) -> Position:
    position = await find_position(conn, position_id)
    if position is None:
        raise WorkerError(f"position {position_id} does not exist")
    return position


async def load_orders(conn: Conn, position_id: uuid.UUID | str) -> list[Order]:
    """The position's orders the worker wrote itself, oldest first (the stop-loss leg of
    an OCO pair before its take-profit leg)."""
    rows = await fetch_all(conn, Order, "exec_orders_of_position", position_id=position_id)
    return [o for o in rows if is_worker_order(o.id, o.purpose, o.client_order_id)]


async def log_foreign_orders(conn: Conn, position: Position, log: Any) -> None:
    """Log the position's order rows the worker did not write (they are ignored)."""
    ids = await fetch_column(conn, "exec_foreign_orders_of_position", position_id=position.id)
    for order_id in ids:
        log.warning("foreign_order_ignored", order_id=str(order_id), position_id=str(position.id))
