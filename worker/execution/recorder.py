"""Write what the exchange said into the database, in one transaction.

Order status (walking only legal moves), one ``trades`` row per exchange fill (deduplicated
by exchange trade id), the position's figures refolded from all of its fills
(``worker.accounting``), and the position's status when the order's outcome decides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from worker.accounting import (
    Fill,
    Market,
    PositionFigures,
    fee_in_quote,
    fold,
    quantize_money,
    quantize_percent,
)
from worker.db.queries import q
from worker.exchanges.base import ExchangeFill, OrderState
from worker.execution.rules import order_path, order_status_for, position_path, position_target
from worker.testing.crashpoints import crashpoint

Row = dict[str, Any]
MIN_HELD = Decimal("0.00000001")  # the smallest positive DECIMAL(20, 8)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a recording changed: the order's status and the position's (None: unchanged)."""

    order_status: str
    position_status: str | None
    figures: PositionFigures


async def set_position_status(
    conn: psycopg.AsyncConnection[Any],
    position: Row,
    target: str,
    *,
    reason: str | None = None,
    close_reason: str | None = None,
) -> str:
    """Move a position to ``target`` through legal moves (compare-and-set each step)."""
    current = str(position["status"])
    for step in position_path(current, target):
        cur = await conn.execute(
            q("exec_set_position_status"),
            {
                "position_id": position["id"],
                "old": current,
                "new": step,
                "reason": reason,
                "close_reason": close_reason,
            },
        )
        if cur.rowcount != 1:
            raise RuntimeError(f"position {position['id']} moved under us ({current} -> {step})")
        current = step
    position["status"] = current
    return current


async def set_order_status(conn: psycopg.AsyncConnection[Any], order: Row, target: str) -> None:
    current = str(order["status"])
    for step in order_path(current, target):
        await conn.execute(
            q("exec_set_order_status"), {"order_id": order["id"], "old": current, "status": step}
        )
        current = step
    order["status"] = current


async def record(
    conn: psycopg.AsyncConnection[Any],
    position: Row,
    order: Row,
    state: OrderState,
    fills: list[ExchangeFill],
    market: Market,
    third_prices: dict[str, Decimal],
    *,
    dust: Decimal = Decimal(0),
) -> Outcome:
    """Record ``state`` of ``order``; the caller holds the position lock and a transaction.

    A holding below ``dust`` (the symbol's step size: what no order can sell, e.g. the
    remainder of a base-asset fee once the exit was floored to the step) counts as flat."""
    target = order_status_for(state.status, state.executed_qty)
    if order["status"] == "created" and target != "failed":
        await set_order_status(conn, order, "submitted")  # accepted, then its fills
    for fill in fills:
        await _insert_trade(conn, position, order, fill, market, third_prices)
    await _update_order_totals(conn, order, state, target)  # before: events carry the totals
    await set_order_status(conn, order, target)
    crashpoint(f"{order['purpose']}.recording")  # test hook: a kill here rolls all of it back
    figures = await refold(conn, position, market)
    flat = figures.held_quantity < max(dust, MIN_HELD)
    goal = position_target(
        str(position["status"]), str(order["purpose"]), target, state.executed_qty, flat
    )
    new_status = None
    if goal is not None:
        reason = _failure_reason(order, state, goal)
        # an exit keeps the reason it was requested for; a stop fired on its own
        close = str(order["purpose"]) if order["purpose"] in ("stop_loss", "take_profit") else None
        new_status = await set_position_status(
            conn, position, goal, reason=reason, close_reason=close
        )
    return Outcome(target, new_status, figures)


def _failure_reason(order: Row, state: OrderState, goal: str) -> str | None:
    if goal == "failed":
        return f"entry order {state.status.lower()} with nothing filled"
    if goal == "open" and order["purpose"] == "exit":
        return f"exit order {state.status.lower()}: the position is still held"
    return None


async def _insert_trade(
    conn: psycopg.AsyncConnection[Any],
    position: Row,
    order: Row,
    fill: ExchangeFill,
    market: Market,
    third_prices: dict[str, Decimal],
) -> None:
    fee_quote = fee_in_quote(
        fill.commission,
        fill.commission_asset,
        market,
        fill.price,
        third_prices.get(fill.commission_asset.upper()),
    )
    await conn.execute(
        q("exec_insert_trade"),
        {
            "order_id": order["id"],
            "position_id": position["id"],
            "trade_id": fill.trade_id,
            "symbol": order["symbol"],
            "side": order["side"],
            "price": fill.price,
            "quantity": fill.qty,
            "value": quantize_money(fill.price * fill.qty),
            "fee": fill.commission,
            "fee_asset": fill.commission_asset,
            "fee_quote": quantize_money(fee_quote),
            "is_paper_trade": order["is_paper_trade"],
            "executed_at": datetime.fromtimestamp(fill.time_ms / 1000, UTC),
        },
    )


async def _update_order_totals(
    conn: psycopg.AsyncConnection[Any], order: Row, state: OrderState, target: str
) -> None:
    cur = await conn.execute(q("exec_order_fill_totals"), {"order_id": order["id"]})
    row = await cur.fetchone()
    qty, value, fees = (Decimal(row[0]), Decimal(row[1]), Decimal(row[2])) if row else (0, 0, 0)
    await conn.execute(
        q("exec_update_order_fills"),
        {
            "order_id": order["id"],
            "exchange_order_id": state.exchange_order_id or None,
            "exchange_status": state.status,
            "filled_quantity": qty,
            "avg_fill_price": quantize_money(Decimal(value) / qty) if qty else None,
            "total_value": quantize_money(Decimal(value)),
            "fees": quantize_money(Decimal(fees)),
            "raw": Jsonb(state.raw),
            "error": None,
            "filled": target == "filled",
        },
    )


async def refold(
    conn: psycopg.AsyncConnection[Any], position: Row, market: Market
) -> PositionFigures:
    """Recompute the position's figures from all of its fills and store them."""
    cur = await conn.execute(q("exec_fills_of_position"), {"position_id": position["id"]})
    rows = await cur.fetchall()
    fills = [
        Fill(
            side=r[0],
            price=r[1],
            quantity=r[2],
            fee=r[3] or Decimal(0),
            fee_asset=r[4] or market.quote_asset,
            fee_quote=r[5] or Decimal(0),
            trade_id=r[6],
        )
        for r in rows
    ]
    figures = fold(position["side"], market, fills)
    entries = [r for r in rows if r[8] in ("entry", "scale_in")]
    exits = [r for r in rows if r[8] not in ("entry", "scale_in")]
    await conn.execute(q("exec_update_figures"), _figure_params(position, figures, entries, exits))
    return figures


def _figure_params(
    position: Row, f: PositionFigures, entries: list[Any], exits: list[Any]
) -> dict[str, Any]:
    money = quantize_money
    has_exit = f.exit_quantity > 0
    return {
        "position_id": position["id"],
        "entry_price": money(f.entry_price) if entries else None,
        "entry_quantity": money(f.entry_quantity) if entries else None,
        "entry_value": money(f.entry_value) if entries else None,
        "entry_time": entries[0][7] if entries else None,
        "entry_order_id": next((r[9] for r in entries if r[8] == "entry"), None),
        "exit_price": money(f.exit_price) if has_exit else None,
        "exit_quantity": money(f.exit_quantity) if has_exit else None,
        "exit_value": money(f.exit_value) if has_exit else None,
        "exit_time": exits[-1][7] if exits else None,
        "exit_order_id": exits[-1][9] if exits else None,
        "realized_pnl": money(f.realized_pnl) if has_exit else None,
        "realized_pnl_percent": quantize_percent(f.realized_pnl_percent) if has_exit else None,
        "fees_paid": money(f.fees_paid) if entries else None,
        "held_quantity": money(f.held_quantity),
        "entry_cost": money(f.entry_cost) if entries else None,
    }


async def record_rejection(
    conn: psycopg.AsyncConnection[Any], position: Row, order: Row, code: int | None, msg: str
) -> str | None:
    """The exchange refused the order outright: order failed, and what that means for the
    position (an entry with nothing filled fails; an exit goes back to open)."""
    await set_order_status(conn, order, "failed")
    text = f"rejected by the exchange: {code} {msg}" if code is not None else f"rejected: {msg}"
    await conn.execute(
        "UPDATE orders SET error_message = %s WHERE id = %s", (text[:1000], order["id"])
    )
    purpose, status = str(order["purpose"]), str(position["status"])
    if purpose == "entry" and status == "submitting":
        return await set_position_status(conn, position, "failed", reason=f"entry {text}")
    if purpose == "exit" and status == "closing":
        return await set_position_status(conn, position, "open", reason=f"exit {text}")
    return None
