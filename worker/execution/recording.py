"""Where a fill is recorded: what the exchange said of an order, written into the database.

:func:`record_answer` takes the exchange's view of one order (its status, what it
executed) and, when that says anything new, completes the fills from the exchange's trade
list and writes in one transaction: the order's status (walking only legal moves), one
``trades`` row per exchange fill (deduplicated by exchange trade id), the order's totals,
the position's figures refolded from all of its fills (``figures.py``), the position's
status when the order's outcome decides it, and the request the order was made for.
The caller holds the position's lock.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from psycopg.types.json import Jsonb

from worker.accounting import Market, PositionFigures, fee_in_quote, quantize_money
from worker.db.queries import q
from worker.exchanges.base import Exchange, ExchangeFill, OrderState
from worker.execution.context import CrashPoint, LookLater
from worker.execution.figures import refold
from worker.execution.rows import Conn, Order, Position
from worker.execution.statuses import FINAL_ORDER, order_status_for, position_target
from worker.execution.transitions import set_order_status, set_position_status

MIN_HELD = Decimal("0.00000001")  # the smallest positive DECIMAL(20, 8)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a recording changed: the order's status, the position's new status (None:
    unchanged), the position as it is now, and its figures."""

    order_status: str
    position_status: str | None
    position: Position
    figures: PositionFigures


@dataclass(frozen=True, slots=True)
class Answer:
    """What the exchange said of one order, with what recording it needs."""

    exchange: Exchange
    position: Position
    order: Order
    state: OrderState


@dataclass(frozen=True, slots=True)
class Prepared:
    """An answer's reads done before its transaction: its new fills and their market."""

    fills: list[ExchangeFill]
    market: Market
    third: dict[str, Decimal]
    dust: Decimal


async def record_answer(
    conn: Conn,
    exchange: Exchange,
    position: Position,
    order: Order,
    state: OrderState,
    crash_point: CrashPoint,
) -> Outcome | None:
    """Record ``state`` of ``order``; None when the exchange says nothing new (no write)."""
    answer = Answer(exchange, position, order, state)
    prepared = await prepare_answer(conn, answer, fresh=False)
    if prepared is None:
        return None  # nothing new on the exchange: no write, no row lock
    async with conn.transaction():
        return await write_answer(conn, answer, prepared, crash_point)


async def prepare_answer(conn: Conn, answer: Answer, *, fresh: bool) -> Prepared | None:
    """The reads before recording ``answer``; None when it says nothing new. ``fresh``: the
    order was just sent for the first time by the caller (none of its fills is recorded)."""
    order, state, exchange = answer.order, answer.state, answer.exchange
    if _unchanged(order, state):
        return None
    fills = await _new_fills(conn, exchange, order, state, known=None if not fresh else {})
    rules = await exchange.symbol_rules(order.symbol)
    market = Market(rules.base_asset, rules.quote_asset)
    third = await _third_prices(exchange, fills, market)
    return Prepared(fills, market, third, rules.step_size)


async def write_answer(
    conn: Conn, answer: Answer, prepared: Prepared, crash_point: CrashPoint
) -> Outcome:
    """Record ``answer`` in the caller's transaction; the request it settles too."""
    order, state = answer.order, answer.state
    outcome = await record(
        conn,
        answer.position,
        order,
        state,
        prepared.fills,
        prepared.market,
        prepared.third,
        dust=prepared.dust,
        crash_point=crash_point,
    )
    if outcome.order_status in FINAL_ORDER:
        error = None if state.executed_qty > 0 else f"order {state.status.lower()}"
        await finish_request(conn, order.request_id, "done", error, order_id=order.id)
    return outcome


async def record(
    conn: Conn,
    position: Position,
    order: Order,
    state: OrderState,
    fills: list[ExchangeFill],
    market: Market,
    third_prices: dict[str, Decimal],
    *,
    dust: Decimal,
    crash_point: CrashPoint,
) -> Outcome:
    """Record ``state`` of ``order`` with ``fills``; the caller holds a transaction.

    A holding below ``dust`` (the symbol's step size: what no order can sell, e.g. the
    remainder of a base-asset fee once the exit was floored to the step) counts as flat."""
    target = order_status_for(state.status, state.executed_qty)
    if order.status == "created" and target != "failed":
        order = await set_order_status(conn, order, "submitted")  # accepted, then its fills
    for fill in fills:
        await _insert_trade(conn, position, order, fill, market, third_prices)
    await _update_order_totals(conn, order, state, target)  # before: events carry the totals
    order = await set_order_status(conn, order, target)
    crash_point(f"{order.purpose}.recording")  # a kill here rolls all of it back
    figures = await refold(conn, position, market)
    flat = figures.held_quantity < max(dust, MIN_HELD)
    goal = position_target(position.status, order.purpose, target, state.executed_qty, flat)
    new_status = None
    if goal is not None:
        reason = failure_reason(order, state, goal)
        # an exit keeps the reason it was requested for; a stop fired on its own
        close = order.purpose if order.purpose in ("stop_loss", "take_profit") else None
        position = await set_position_status(
            conn, position, goal, reason=reason, close_reason=close
        )
        new_status = position.status
    return Outcome(target, new_status, position, figures)


def failure_reason(order: Order, state: OrderState, goal: str) -> str | None:
    if goal == "failed":
        return f"entry order {state.status.lower()} with nothing filled"
    if goal == "open" and order.purpose == "exit":
        return f"exit order {state.status.lower()}: the position is still held"
    return None


async def _insert_trade(
    conn: Conn,
    position: Position,
    order: Order,
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
        },
    )


async def _update_order_totals(conn: Conn, order: Order, state: OrderState, target: str) -> None:
    cur = await conn.execute(q("exec_order_fill_totals"), {"order_id": order.id})
    row = await cur.fetchone()
    qty, value, fees = (Decimal(row[0]), Decimal(row[1]), Decimal(row[2])) if row else (0, 0, 0)
    await conn.execute(
        q("exec_update_order_fills"),
        {
            "order_id": order.id,
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


async def record_rejection(
    conn: Conn, position: Position, order: Order, code: int | None, msg: str
) -> Position:
    """The exchange refused the order outright: order failed, and what that means for the
    position (an entry with nothing filled fails; an exit goes back to open)."""
    await set_order_status(conn, order, "failed")
    text = f"rejected by the exchange: {code} {msg}" if code is not None else f"rejected: {msg}"
    await conn.execute(q("exec_set_order_error"), {"order_id": order.id, "error": text[:1000]})
    if order.purpose == "entry" and position.status == "submitting":
        return await set_position_status(conn, position, "failed", reason=f"entry {text}")
    if order.purpose == "exit" and position.status == "closing":
        return await set_position_status(conn, position, "open", reason=f"exit {text}")
    return position


async def finish_request(
    conn: Conn,
    request_id: uuid.UUID | None,
    status: str,
    error: str | None,
    *,
    order_id: uuid.UUID | None = None,
) -> None:
    """Settle a pending request (``done`` or ``rejected``); nothing for an order made
    without one (``request_id`` None)."""
    if request_id is None:
        return
    params = {"request_id": request_id, "status": status, "error": error, "order_id": order_id}
    await conn.execute(q("exec_finish_request"), params)


def _unchanged(order: Order, state: OrderState) -> bool:
    """The exchange says nothing the order's row does not say already (same status, same
    executed quantity, all of it recorded): recording it again would only rewrite rows."""
    return bool(
        order.exchange_status == state.status
        and order.filled_quantity == state.executed_qty
        and order.status == order_status_for(state.status, state.executed_qty)
        and order.missing_lookups == 0
        and order.binance_order_id == (state.exchange_order_id or order.binance_order_id)
    )


async def _new_fills(
    conn: Conn,
    exchange: Exchange,
    order: Order,
    state: OrderState,
    known: dict[str, Decimal] | None = None,
) -> list[ExchangeFill]:
    """The order's fills not recorded yet (``known``: its recorded trades, when the caller
    knows them; else they are read). Fetched from after the last recorded trade
    (the whole list again if those fall short: a trade listed late, out of order); the
    trade list can lag the order, so an order is never settled on fewer fills than it
    executed: look again later."""
    if known is None:
        cur = await conn.execute(q("exec_trades_of_order"), {"order_id": order.id})
        known = {str(r[0]): Decimal(r[1]) for r in await cur.fetchall()}
    recorded = sum(known.values(), Decimal(0))

    def fresh(fills: list[ExchangeFill]) -> list[ExchangeFill]:
        return [f for f in fills if f.trade_id not in known]

    def short(fills: list[ExchangeFill]) -> bool:
        return recorded + _listed(fresh(fills)) < state.executed_qty

    fills = list(state.fills)
    if short(fills) and state.exchange_order_id:
        after = _last_trade_id(known)
        symbol, exchange_id = order.symbol, state.exchange_order_id
        fills = await exchange.get_fills(symbol, exchange_id, after=after)
        if short(fills) and after is not None:
            fills = await exchange.get_fills(symbol, exchange_id)
    if short(fills):
        raise LookLater(
            f"order {order.client_order_id}: {recorded + _listed(fresh(fills))} of "
            f"{state.executed_qty} executed is listed in its trades so far"
        )
    return fresh(fills)


async def _third_prices(
    exchange: Exchange, fills: list[ExchangeFill], market: Market
) -> dict[str, Decimal]:
    """Prices in quote of the fee assets that are neither base nor quote (BNB), now."""
    prices: dict[str, Decimal] = {}
    for fill in fills:
        asset = fill.commission_asset.upper()
        if market.role_of(asset) == "other" and asset not in prices and fill.commission:
            prices[asset] = await exchange.price(f"{asset}{market.quote_asset}")
    return prices


def _listed(fills: list[ExchangeFill]) -> Decimal:
    return sum((f.qty for f in fills), Decimal(0))


def _last_trade_id(known: dict[str, Decimal]) -> str | None:
    """The highest recorded trade id of an order, when the exchange numbers its trades."""
    numbered = [int(t) for t in known if t.isdigit()]
    return str(max(numbered)) if numbered else None
