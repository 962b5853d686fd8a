"""A position's figures (entry, exit, holding, fees, realized PnL), refolded from all of its
recorded fills (``worker.accounting``) and stored on its row."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from psycopg.rows import dict_row

from worker.accounting import Fill, Market, PositionFigures, fold, quantize_money, quantize_percent
from worker.db.queries import q
from worker.execution.rows import Conn, Position, Trade, fetch_all

ADDING: tuple[str, ...] = ("entry", "scale_in")  # purposes of the orders that add to a holding


async def refold(conn: Conn, position: Position, market: Market) -> PositionFigures:
    """Recompute the position's figures from all of its fills and store them."""
    trades = await fetch_all(conn, Trade, "exec_fills_of_position", position_id=position.id)
    figures, params = figures_of(position, trades, market)
    await conn.execute(q("exec_update_figures"), params)
    return figures


async def refold_many(
    conn: Conn, positions: Sequence[tuple[Position, Market]]
) -> list[PositionFigures]:
    """:func:`refold` for many positions: their fills read and their figures stored with one
    statement each. In the caller's transaction."""
    ids = [position.id for position, _ in positions]
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(q("exec_fills_of_positions"), {"position_ids": ids})
    by_position: dict[Any, list[Trade]] = {}
    for row in await cur.fetchall():
        by_position.setdefault(row.pop("position_id"), []).append(Trade(**row))
    done = [figures_of(p, by_position.get(p.id, []), market) for p, market in positions]
    columns: dict[str, list[Any]] = {}
    for _, params in done:
        for key, value in params.items():
            columns.setdefault(key, []).append(value)
    await conn.execute(q("exec_update_figures_many"), columns)
    return [figures for figures, _ in done]


def figures_of(
    position: Position, trades: list[Trade], market: Market
) -> tuple[PositionFigures, dict[str, Any]]:
    """The position's figures folded from ``trades`` (all of its fills, in fold order), and
    the parameters that store them."""
    fills = [
        Fill(
            side=t.side,
            price=t.price,
            quantity=t.quantity,
            fee=t.fee or Decimal(0),
            fee_asset=t.fee_asset or market.quote_asset,
            fee_quote=t.fee_quote or Decimal(0),
            trade_id=t.binance_trade_id,
        )
        for t in trades
    ]
    figures = fold(position.side, market, fills)
    entries = [t for t in trades if t.order_purpose in ADDING]
    exits = [t for t in trades if t.order_purpose not in ADDING]
    return figures, _figure_params(position, figures, entries, exits)


def _figure_params(
    position: Position, f: PositionFigures, entries: list[Trade], exits: list[Trade]
) -> dict[str, Any]:
    money = quantize_money
    has_exit = f.exit_quantity > 0
    return {
        "position_id": position.id,
        "entry_price": money(f.entry_price) if entries else None,
        "entry_quantity": money(f.entry_quantity) if entries else None,
        "entry_value": money(f.entry_value) if entries else None,
        "entry_time": entries[0].executed_at if entries else None,
        "entry_order_id": next(
            (t.exchange_order_id for t in entries if t.order_purpose == "entry"), None
        ),
        "exit_price": money(f.exit_price) if has_exit else None,
        "exit_quantity": money(f.exit_quantity) if has_exit else None,
        "exit_value": money(f.exit_value) if has_exit else None,
        "exit_time": exits[-1].executed_at if exits else None,
        "exit_order_id": exits[-1].exchange_order_id if exits else None,
        "realized_pnl": money(f.realized_pnl) if has_exit else None,
        "realized_pnl_percent": quantize_percent(f.realized_pnl_percent) if has_exit else None,
        "fees_paid": money(f.fees_paid) if entries else None,
        "held_quantity": money(f.held_quantity),
        "entry_cost": money(f.entry_cost) if entries else None,
    }
