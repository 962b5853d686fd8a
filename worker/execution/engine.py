"""The execution engine: what the handlers and the watcher call, each action on one
position under that position's lock (``locks.py``).

* :meth:`Engine.enter`: a new position is checked and its entry order recorded
  (``entry.py``); :meth:`Engine.enter_many`: many at once (``entry_batch.py``);
* :meth:`Engine.handle_request`: an exit, partial exit or scale-in makes its order
  (``requests.py``); :meth:`Engine.handle_requests`: many at once (``request_batch.py``);
* :meth:`Engine.reconcile`: the watcher's pass over a position with an order in flight;
* :meth:`Engine.record_pushed`: an order update the exchange pushed (the user data stream,
  ``live_fills.py``), recorded as a lookup's answer would be;
* :meth:`Engine.restore_protection`: the watcher's repair of a live position held without
  the stop-loss / take-profit it asks for (``protection.py``).

Every action ends by driving the position's open orders (``orders.py``: send, look up,
record what the exchange says with ``recording.py``) and putting back the protection the
position is missing. The database decides: the triggers turn every change into events for
the pipeline.

The parts share one :class:`~worker.execution.context.Context`. ``crash_point`` is called
at each named step; by default it does nothing, a recovery test passes one that kills the
process there (``worker/testing/crashpoints.py``, run by ``worker/testing/armed_worker.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from psycopg_pool import AsyncConnectionPool

from worker.errors import WorkerError
from worker.exchanges.base import OrderState
from worker.exchanges.budget import Priority, urgent
from worker.execution.batch_sends import BatchSends
from worker.execution.context import Context, CrashPoint, no_crash_point
from worker.execution.entry import Entry
from worker.execution.entry_batch import EntryBatch
from worker.execution.locks import (
    find_position,
    load_orders,
    load_position,
    load_positions,
    locked,
    locked_many,
    log_foreign_orders,
)
from worker.execution.orders import Driver
from worker.execution.protection import Protection
from worker.execution.recording import Outcome
from worker.execution.request_batch import RequestBatch
from worker.execution.requests import Requests
from worker.execution.routing import ExchangeRouter
from worker.execution.rows import Conn, Order, Position
from worker.execution.statuses import FINAL_ORDER, FINAL_POSITION
from worker.settings import RiskSettings


class Engine:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        router: ExchangeRouter,
        *,
        resend_after: int,
        log: Any,
        crash_point: CrashPoint = no_crash_point,
        risk: RiskSettings | None = None,
        lost_after_s: float = 300.0,
        send_concurrency: int = 8,
    ) -> None:
        self.pool, self.router = pool, router
        self.ctx = Context(
            router, log, resend_after, crash_point, risk or RiskSettings(), lost_after_s
        )
        self.driver = Driver(self.ctx, after_settled=self._after_settled)
        self.protection = Protection(self.ctx, self.driver)
        self.entry = Entry(self.ctx)
        self.requests = Requests(self.ctx, self.protection)
        sends = BatchSends(self.ctx, self.driver, send_concurrency=send_concurrency)
        self.entries = EntryBatch(self.ctx, self.entry, self.driver, self.protection, sends)
        self.request_batch = RequestBatch(self.ctx, self.requests, self.protection, sends)

    async def enter(self, position_id: str) -> None:
        """A new position: validate, record the entry order, send it, record the outcome."""
        async with locked(self.pool, position_id) as conn:
            position = await load_position(conn, position_id)
            if position.status == "created":
                with urgent(Priority.ENTRY):  # its price and balance lookups: an entry's
                    position = await self.entry.start(conn, position)
            await self.drive_open_orders(conn, position)

    async def enter_many(self, position_ids: Sequence[str]) -> dict[str, Exception | None]:
        """:meth:`enter` for many new positions at once (``entry_batch.py``): each one's
        result, None or what failed it. A position held elsewhere has none: its caller
        waits for it as for :meth:`enter`."""
        async with locked_many(self.pool, position_ids) as (conn, held):
            positions = await load_positions(conn, held)
            with urgent(Priority.ENTRY):
                results = await self.entries.run(conn, positions, self.drive_open_orders)
        missing = set(held) - {str(p.id) for p in positions}
        out: dict[str, Exception | None] = {str(k): v for k, v in results.items()}
        for position_id in missing:
            out[position_id] = WorkerError(f"position {position_id} does not exist")
        return out

    async def handle_request(self, position_id: str, request_id: str) -> None:
        """A request recorded for the position: make its order (refused or nothing to do:
        what follows still puts back protection), then drive it."""
        async with locked(self.pool, position_id) as conn:
            await self._handle_request(conn, position_id, request_id)

    async def handle_requests(
        self, requests: Sequence[tuple[str, str]]
    ) -> dict[str, Exception | None]:
        """:meth:`handle_request` for many ``(position id, request id)`` at once, one per
        position (``request_batch.py``): each position's result, None or what failed it. A
        position held elsewhere has none: its caller waits for it as for
        :meth:`handle_request`."""
        async with locked_many(self.pool, [p for p, _ in requests]) as (conn, held):
            positions = {str(p.id): p for p in await load_positions(conn, held)}
            items = [(positions[p], r) for p, r in requests if p in positions]
            results = await self.request_batch.run(
                conn, items, lambda c, p, r: self._handle_request(c, p.id, r)
            )
        out: dict[str, Exception | None] = {str(k): v for k, v in results.items()}
        for position_id in set(held) - set(positions):
            out[position_id] = WorkerError(f"position {position_id} does not exist")
        return out

    async def _handle_request(
        self, conn: Conn, position_id: str | uuid.UUID, request_id: str
    ) -> None:
        await self.requests.start(conn, request_id)
        await self.drive_open_orders(conn, await load_position(conn, position_id))

    async def reconcile(self, position_id: str) -> None:
        """Bring the position's orders in flight up to date with the exchange."""
        async with locked(self.pool, position_id) as conn:
            position = await find_position(conn, position_id)
            if position is not None:
                await self.drive_open_orders(conn, position)

    async def record_pushed(self, position_id: str, order_id: uuid.UUID, state: OrderState) -> None:
        """Record an order update the exchange pushed, then its follow-ups (as for a lookup's
        answer). An update older than what the order's row says (a final row, or more
        executed than ``state`` says: updates and lookups can cross) is dropped."""
        async with locked(self.pool, position_id) as conn:
            position = await find_position(conn, position_id)
            orders = await load_orders(conn, position_id) if position is not None else []
            order = next((o for o in orders if o.id == order_id), None)
            if position is None or order is None or order.status in FINAL_ORDER:
                return
            if (order.filled_quantity or Decimal(0)) > state.executed_qty:
                return
            exchange = await self.ctx.router.for_position(position)
            await self.driver.record(conn, exchange, position, order, state)

    async def restore_protection(self, position_id: str) -> None:
        """Put back the stop-loss / take-profit a live position is missing
        (:meth:`Protection.restore`)."""
        async with locked(self.pool, position_id) as conn:
            await self.protection.restore(conn, await load_position(conn, position_id))

    async def drive_open_orders(self, conn: Conn, position: Position) -> None:
        """Drive every order of the position not final yet, then place the protection it
        is missing (what a failed exit or the exchange took). Nothing may stay resting
        after a close (e.g. a stop's sibling, if the worker stopped between recording the
        fill and cancelling it)."""
        await log_foreign_orders(conn, position, self.ctx.log)
        if position.status in FINAL_POSITION:
            await self.protection.cancel_protection(conn, position)
            return
        for order in await load_orders(conn, position.id):
            if order.status not in FINAL_ORDER:
                position = await self.driver.drive(conn, position, order)
        await self.protection.protect(conn, position)

    async def _after_settled(self, conn: Conn, order: Order, outcome: Outcome) -> Position:
        return await self.protection.after_settled(conn, order, outcome)
