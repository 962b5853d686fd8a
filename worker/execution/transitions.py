"""Moving a position or an order to a new status through legal moves only, one
compare-and-set ``UPDATE`` per step (the lifecycle triggers check each one)."""

from __future__ import annotations

from dataclasses import replace

from worker.db.queries import q
from worker.execution.rows import Conn, Order, Position
from worker.execution.statuses import order_path, position_path


async def set_position_status(
    conn: Conn,
    position: Position,
    target: str,
    *,
    reason: str | None = None,
    close_reason: str | None = None,
) -> Position:
    """Move a position to ``target`` through legal moves; returns it with its new status."""
    current = position.status
    for step in position_path(current, target):
        cur = await conn.execute(
            q("exec_set_position_status"),
            {
                "position_id": position.id,
                "old": current,
                "new": step,
                "reason": reason,
                "close_reason": close_reason,
            },
        )
        if cur.rowcount != 1:
            raise RuntimeError(f"position {position.id} moved under us ({current} -> {step})")
        current = step
    return replace(position, status=current)


async def set_order_status(conn: Conn, order: Order, target: str) -> Order:
    """Move an order to ``target`` through legal moves; returns it with its new status."""
    current = order.status
    for step in order_path(current, target):
        await conn.execute(
            q("exec_set_order_status"), {"order_id": order.id, "old": current, "status": step}
        )
        current = step
    return replace(order, status=current)
