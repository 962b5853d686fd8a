"""Requests on a position (``position_requests``: exit, partial exit, scale-in), turned into
orders.

A full exit cancels the position's protection first (and a working entry: the position
then opens with what it filled, or fails with nothing to exit), moves the position to
``closing`` and sells what is actually held, floored to the step size. A partial exit
(``scale_out``) and a scale-in are market orders on an open position. A request the
position cannot take (wrong status, exchange filters) is ``rejected`` with the reason; the
order it makes settles it later (``recording.py``).
"""

from __future__ import annotations

from decimal import Decimal

from worker.exchanges.base import OrderRejected
from worker.exchanges.budget import Priority, urgent
from worker.exchanges.filters import SymbolRules, check_order, round_quantity
from worker.execution.context import Context
from worker.execution.entry import read_price
from worker.execution.locks import load_position
from worker.execution.orders import new_order
from worker.execution.protection import Protection
from worker.execution.recording import finish_request
from worker.execution.rows import Conn, Position, Request, fetch_one, fetch_value
from worker.execution.statuses import LIVE_POSITION
from worker.execution.transitions import set_position_status

NOTHING_TO_EXIT = "the entry ended with nothing filled: nothing to exit"


class Requests:
    def __init__(self, ctx: Context, protection: Protection) -> None:
        self.ctx, self.protection = ctx, protection

    async def start(self, conn: Conn, request_id: str) -> None:
        """Make the order of a pending request no order has been made for yet (or reject
        the request); anything else was started before and is left alone."""
        request = await fetch_one(conn, Request, "exec_request", request_id=request_id)
        started = await fetch_value(conn, "exec_order_of_request", request_id=request_id)
        if request is not None and request.status == "pending" and started is None:
            await self._start(conn, request)

    async def _start(self, conn: Conn, request: Request) -> None:
        """An exit or scale-out goes first in the weight budget, its price lookup too
        (``exchanges/budget.py``); a scale-in as an entry."""
        with urgent(Priority.ENTRY if request.kind == "scale_in" else Priority.EXIT):
            await self._make_order(conn, request)

    async def _make_order(self, conn: Conn, request: Request) -> None:
        position = await load_position(conn, request.position_id)
        if request.kind == "exit":
            await self.clear_for_exit(conn, position)
            self.ctx.crash_point("exit.protection_cancelled")
            position = await load_position(conn, request.position_id)
            if position.status == "failed":
                async with conn.transaction():
                    await finish_request(conn, request.id, "done", NOTHING_TO_EXIT)
                return
        problem, quantity, purpose = await self.plan(position, request)
        async with conn.transaction():
            if problem is not None:
                await finish_request(conn, request.id, "rejected", problem)
                self.ctx.log.warning("request_rejected", request_id=str(request.id), error=problem)
                return
            await new_order(
                conn,
                position,
                purpose,
                position.exit_side if request.kind == "exit" else position.entry_side,
                "market",
                quantity,
                quote=request.quote_quantity,
                request_id=request.id,
            )
            if purpose == "exit":
                await set_position_status(conn, position, "closing", close_reason=request.reason)

    async def clear_for_exit(self, conn: Conn, position: Position) -> None:
        """What a full exit cancels first: a working entry (the position then opens with
        what it filled, or fails with nothing to exit) and the protection."""
        if position.status == "submitting":  # abandon the entry, sell what it bought
            position = await self.protection.cancel_entry(conn, position)
        await self.protection.cancel_protection(conn, position)

    async def plan(
        self, position: Position, request: Request, prices: dict[str, Decimal] | None = None
    ) -> tuple[str | None, Decimal, str]:
        """Why the request is refused (None: it is not), the quantity and the purpose of
        its order (``exit`` when it sells all that can be sold, else ``scale_out``).
        ``prices``: each symbol's price read once for a batch of requests."""
        if position.status not in LIVE_POSITION:
            return f"position is {position.status}", Decimal(0), ""
        exchange = await self.ctx.router.for_position(position)
        rules = await exchange.symbol_rules(position.symbol)
        held = position.held_quantity or Decimal(0)
        if request.kind == "scale_in":
            price = await read_price(exchange, position.symbol, prices)
            wanted = request.quantity
            if wanted is None:
                assert request.quote_quantity is not None  # the SQL functions ask for one
                wanted = request.quote_quantity / price
            qty = round_quantity(rules, wanted)
            return _filters(rules, qty, price), qty, "scale_in"
        wanted = held if request.quantity is None else min(request.quantity, held)
        qty = round_quantity(rules, wanted)
        everything = request.quantity is None or qty >= round_quantity(rules, held)
        price = await read_price(exchange, position.symbol, prices)
        return _filters(rules, qty, price), qty, "exit" if everything else "scale_out"


def _filters(rules: SymbolRules, qty: Decimal, price: Decimal) -> str | None:
    """What the exchange's filters say against this order, or None."""
    try:
        check_order(rules, qty, price)
    except OrderRejected as exc:
        return str(exc)
    return None
