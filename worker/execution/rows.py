"""The rows the engine reads, as frozen dataclasses, and the helpers that load them.

psycopg builds them (``class_row``): a query of ``worker/db/execution.sql`` that loads one
selects exactly its fields, by name, so a column the engine does not know fails loudly
instead of being ignored. A changed row is a new value (``dataclasses.replace``), never an
update in place: what a step changed is what it returns.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from psycopg.rows import class_row

from worker.accounting import FillSide
from worker.accounting import Side as PositionSide
from worker.db.queries import q
from worker.exchanges.base import OrderType
from worker.exchanges.base import Side as OrderSide
from worker.execution.client_ids import Purpose

Conn = psycopg.AsyncConnection[Any]
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Position:
    """What the engine reads of a ``positions`` row."""

    id: uuid.UUID
    user_id: uuid.UUID
    symbol: str
    side: PositionSide
    status: str
    requested_quantity: Decimal | None
    requested_quote: Decimal | None
    limit_price: Decimal | None
    stop_loss_price: Decimal | None
    take_profit_price: Decimal | None
    max_loss_usdt: Decimal | None
    is_paper_trade: bool
    held_quantity: Decimal | None
    entry_quantity: Decimal | None
    entry_value: Decimal | None
    account_id: uuid.UUID | None  # the user's exchange account; None: paper, or the operator's
    protection: str | None  # where its stop-loss / take-profit is enforced: exchange | worker

    @property
    def entry_side(self) -> OrderSide:
        """The side of the orders that add to the holding."""
        return "buy" if self.side == "long" else "sell"

    @property
    def exit_side(self) -> OrderSide:
        """The side of the orders that reduce the holding."""
        return "sell" if self.side == "long" else "buy"


@dataclass(frozen=True, slots=True)
class Order:
    """What the engine reads of one of its own ``orders`` rows (the view ``worker_orders``:
    every row has the client order id the worker made for it)."""

    id: uuid.UUID
    position_id: uuid.UUID
    client_order_id: str
    binance_order_id: str | None
    symbol: str
    side: OrderSide
    type: OrderType
    quantity: Decimal
    quote_quantity: Decimal | None
    price: Decimal | None
    stop_price: Decimal | None
    status: str
    exchange_status: str | None
    filled_quantity: Decimal | None
    purpose: Purpose
    is_paper_trade: bool
    request_id: uuid.UUID | None
    send_attempts: int
    missing_lookups: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Request:
    """A ``position_requests`` row: an exit, a partial exit or a scale-in asked for."""

    id: uuid.UUID
    position_id: uuid.UUID
    kind: str  # exit | scale_in
    quantity: Decimal | None
    quote_quantity: Decimal | None
    reason: str
    status: str


@dataclass(frozen=True, slots=True)
class Trade:
    """A recorded fill (``trades`` row) of one of the worker's orders, with that order's
    purpose and exchange order id."""

    side: FillSide
    price: Decimal
    quantity: Decimal
    fee: Decimal | None
    fee_asset: str | None
    fee_quote: Decimal | None
    binance_trade_id: str | None
    executed_at: datetime
    order_purpose: Purpose
    exchange_order_id: str | None


async def fetch_one(conn: Conn, row: type[R], query: str, **params: Any) -> R | None:
    """The first row of the named query as a ``row``, or None."""
    cur = conn.cursor(row_factory=class_row(row))
    await cur.execute(q(query), params)
    return await cur.fetchone()


async def fetch_all(conn: Conn, row: type[R], query: str, **params: Any) -> list[R]:
    """Every row of the named query, as ``row`` values."""
    cur = conn.cursor(row_factory=class_row(row))
    await cur.execute(q(query), params)
    return await cur.fetchall()


async def fetch_column(conn: Conn, query: str, **params: Any) -> list[Any]:
    """The first column of every row of the named query."""
    cur = await conn.execute(q(query), params)
    return [row[0] for row in await cur.fetchall()]


async def fetch_value(conn: Conn, query: str, **params: Any) -> Any:
    """The first column of the named query's first row, or None when there is no row."""
    cur = await conn.execute(q(query), params)
    row = await cur.fetchone()
    return row[0] if row else None
