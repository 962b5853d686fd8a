"""Recording many orders' first answers at once (a batch of entries, ``entry_batch.py``):
what :func:`recording.record` writes for each, written for all of them with one statement
per step, in the caller's transaction:

1. the orders accepted (``created -> submitted``), one statement per move;
2. every fill a ``trades`` row (deduplicated by exchange trade id, as one by one);
3. the orders' totals summed from their trades, and written with the exchange's status
   and, for an order one legal move from its status, that move (one row version);
4. the other orders to their status (legal moves, grouped by move);
5. the positions' figures refolded from all of their fills (``figures.refold_many``);
6. the positions to the status their order's outcome decides (grouped by move, each move
   compare-and-set: a position that moved meanwhile fails the whole batch, which the
   caller then records one by one).

7. the requests the orders were made for settled (one statement).

Each position's rows are written in the order one position's recording writes them, so
its events come in the same order; the crash point of each purpose is reached once.
Only for orders nobody recorded anything of yet (a batch's new entries, exits and scales:
their recorded trades are none), one order per position; each position's figures are
refolded from every fill it has, those of its earlier orders included.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb

from worker.accounting import fee_in_quote, quantize_money
from worker.db.queries import q
from worker.execution.context import CrashPoint
from worker.execution.figures import refold_many
from worker.execution.recording import (
    MIN_HELD,
    Answer,
    Outcome,
    Prepared,
    failure_reason,
    prepare_answer,
    write_answer,
)
from worker.execution.rows import Conn, Order, Position
from worker.execution.statuses import (
    FINAL_ORDER,
    order_path,
    order_status_for,
    position_path,
    position_target,
)


async def record_fresh_answers(
    conn: Conn, answers: list[Answer], crash_point: CrashPoint
) -> list[Outcome | Exception | None]:
    """:func:`recording.record_answer` for the first answers to orders sent once, by this
    caller (a batch of entries: nothing of theirs is recorded yet), written together in ONE
    transaction (:func:`record_many`). If that fails, each is recorded in a transaction of
    its own, as one order's would be, and what failed is returned in its place. None: the
    answer said nothing new."""
    prepared: list[Prepared | Exception | None] = []
    for answer in answers:
        try:
            prepared.append(await prepare_answer(conn, answer, fresh=True))
        except Exception as exc:  # e.g. LookLater: the trade list lags
            prepared.append(exc)
    ready = [(a, p) for a, p in zip(answers, prepared, strict=True) if isinstance(p, Prepared)]
    try:
        async with conn.transaction():
            written = iter(await record_many(conn, ready, crash_point) if ready else [])
            return [next(written) if isinstance(p, Prepared) else p for p in prepared]
    except Exception:  # one answer's write failed (it rolled back all): one at a time
        if conn.broken:
            raise
    outcomes: list[Outcome | Exception | None] = []
    for answer, p in zip(answers, prepared, strict=True):
        if not isinstance(p, Prepared):
            outcomes.append(p)
            continue
        try:
            async with conn.transaction():
                outcomes.append(await write_answer(conn, answer, p, crash_point))
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


async def record_many(
    conn: Conn, items: Sequence[tuple[Answer, Prepared]], crash_point: CrashPoint
) -> list[Outcome]:
    """Record every answer of ``items`` (see the module notes); their outcomes."""
    targets = [order_status_for(a.state.status, a.state.executed_qty) for a, _ in items]
    accepted = [
        (a.order, "submitted")
        for (a, _), target in zip(items, targets, strict=True)
        if a.order.status == "created" and target != "failed"
    ]
    await move_orders(conn, accepted)
    orders = [
        a.order
        if a.order.status != "created" or t == "failed"
        else replace(a.order, status="submitted")
        for (a, _), t in zip(items, targets, strict=True)
    ]
    await _insert_trades(conn, items)
    # an order one step from its target moves with its totals; the others step by step
    one_step = [len(order_path(o.status, t)) == 1 for o, t in zip(orders, targets, strict=True)]
    finals = [t if step else None for t, step in zip(targets, one_step, strict=True)]
    await _update_totals(conn, items, targets, finals)
    rest = [(o, t) for o, t, step in zip(orders, targets, one_step, strict=True) if not step]
    await move_orders(conn, rest)
    for purpose in dict.fromkeys(a.order.purpose for a, _ in items):
        crash_point(f"{purpose}.recording")  # a kill here rolls all of it back
    figures = await refold_many(conn, [(a.position, p.market) for a, p in items])
    goals: list[tuple[Position, str, str | None, str | None]] = []
    for (answer, prepared), target, f in zip(items, targets, figures, strict=True):
        flat = f.held_quantity < max(prepared.dust, MIN_HELD)
        order, state, position = answer.order, answer.state, answer.position
        goal = position_target(position.status, order.purpose, target, state.executed_qty, flat)
        if goal is not None:
            close = order.purpose if order.purpose in ("stop_loss", "take_profit") else None
            goals.append((position, goal, failure_reason(order, state, goal), close))
    moved = await move_positions(conn, goals)
    outcomes = []
    finished: list[tuple[uuid.UUID, str, str | None, uuid.UUID]] = []
    for (answer, _), target, f in zip(items, targets, figures, strict=True):
        new = moved.get(answer.position.id)
        position = answer.position if new is None else replace(answer.position, status=new)
        outcomes.append(Outcome(target, new, position, f))
        state, order = answer.state, answer.order
        if target in FINAL_ORDER and order.request_id is not None:  # (an entry has none)
            error = None if state.executed_qty > 0 else f"order {state.status.lower()}"
            finished.append((order.request_id, "done", error, order.id))
    await finish_requests(conn, finished)
    return outcomes


async def finish_requests(
    conn: Conn, finished: Sequence[tuple[uuid.UUID, str, str | None, uuid.UUID | None]]
) -> None:
    """``recording.finish_request`` for many requests, ``(request, status, error, order)``,
    in one statement."""
    if finished:
        names = ("request_id", "status", "error", "order_id")
        columns = {name: [row[i] for row in finished] for i, name in enumerate(names)}
        await conn.execute(q("exec_finish_requests"), columns)


async def move_orders(conn: Conn, moves: list[tuple[Order, str]]) -> None:
    """Each order to its target through legal moves; one statement per (from, to) step."""
    steps = [(o.id, [o.status, *order_path(o.status, target)]) for o, target in moves]
    for old, new, ids in _by_step(steps):
        await conn.execute(
            q("exec_set_orders_status"), {"order_ids": ids, "old": old, "status": new}
        )


async def move_positions(
    conn: Conn, goals: list[tuple[Position, str, str | None, str | None]]
) -> dict[uuid.UUID, str]:
    """Each position to its goal through legal moves (with its reasons), compare-and-set:
    RuntimeError when one moved meanwhile. The new status of each that moved."""
    reasons = {p.id: (reason, close) for p, _, reason, close in goals}
    steps = [(p.id, [p.status, *position_path(p.status, goal)]) for p, goal, _, _ in goals]
    for old, new, ids in _by_step(steps):
        for (reason, close), group in _group(ids, reasons).items():
            params = {"position_ids": group, "old": old, "new": new, "reason": reason}
            cur = await conn.execute(
                q("exec_set_positions_status"), {**params, "close_reason": close}
            )
            if cur.rowcount != len(group):
                raise RuntimeError(f"positions moved under us ({old} -> {new})")
    return {row_id: chain[-1] for row_id, chain in steps if len(chain) > 1}


def _by_step(steps: list[tuple[uuid.UUID, list[str]]]) -> list[tuple[str, str, list[uuid.UUID]]]:
    """The moves in order: step k of every chain before step k + 1, those making the same
    (from, to) move together."""
    out: list[tuple[str, str, list[uuid.UUID]]] = []
    longest = max((len(chain) for _, chain in steps), default=0)
    for k in range(1, longest):
        groups: dict[tuple[str, str], list[uuid.UUID]] = {}
        for row_id, chain in steps:
            if k < len(chain):
                groups.setdefault((chain[k - 1], chain[k]), []).append(row_id)
        out += [(old, new, ids) for (old, new), ids in groups.items()]
    return out


def _group(
    ids: list[uuid.UUID], reasons: dict[uuid.UUID, tuple[str | None, str | None]]
) -> dict[tuple[str | None, str | None], list[uuid.UUID]]:
    groups: dict[tuple[str | None, str | None], list[uuid.UUID]] = {}
    for row_id in ids:
        groups.setdefault(reasons[row_id], []).append(row_id)
    return groups


async def _insert_trades(conn: Conn, items: Sequence[tuple[Answer, Prepared]]) -> None:
    columns: dict[str, list[Any]] = {}
    for answer, prepared in items:
        order, position, market = answer.order, answer.position, prepared.market
        for fill in prepared.fills:
            third = prepared.third.get(fill.commission_asset.upper())
            fee_quote = fee_in_quote(
                fill.commission, fill.commission_asset, market, fill.price, third
            )
            row = {
                "order_id": order.id,
                "position_id": position.id,
                "trade_id": fill.trade_id,
                "symbol": order.symbol,
                "side": order.side,
                "price": fill.price,
                "quantity": fill.qty,
                "value": quantize_money(fill.price * fill.qty),
                "fee": fill.commission,
                "fee_asset": fill.commission_asset,
                "fee_quote": quantize_money(fee_quote),
                "is_paper_trade": order.is_paper_trade,
                "executed_at": datetime.fromtimestamp(fill.time_ms / 1000, UTC),
            }
            for key, value in row.items():
                columns.setdefault(key, []).append(value)
    if columns:
        await conn.execute(q("exec_insert_trades"), columns)


async def _update_totals(
    conn: Conn,
    items: Sequence[tuple[Answer, Prepared]],
    targets: list[str],
    finals: list[str | None],
) -> None:
    """The orders' totals from their trades, with what the exchange said, and the status of
    those with one in ``finals`` (None: left as it is)."""
    ids = [a.order.id for a, _ in items]
    cur = await conn.execute(q("exec_orders_fill_totals"), {"order_ids": ids})
    sums = {
        row[0]: (Decimal(row[1]), Decimal(row[2]), Decimal(row[3])) for row in await cur.fetchall()
    }
    columns: dict[str, list[Any]] = {}
    for (answer, _), target, final in zip(items, targets, finals, strict=True):
        qty, value, fees = sums.get(answer.order.id, (Decimal(0), Decimal(0), Decimal(0)))
        state = answer.state
        row = {
            "order_id": answer.order.id,
            "exchange_order_id": state.exchange_order_id or None,
            "exchange_status": state.status,
            "filled_quantity": qty,
            "avg_fill_price": quantize_money(value / qty) if qty else None,
            "total_value": quantize_money(value),
            "fees": quantize_money(fees),
            "raw": Jsonb(state.raw),
            "filled": target == "filled",
            "status": final,
        }
        for key, v in row.items():
            columns.setdefault(key, []).append(v)
    await conn.execute(q("exec_update_orders_fills"), columns)
