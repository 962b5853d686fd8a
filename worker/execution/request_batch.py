"""Many requests at once (exits, partial exits, scale-ins: the first pending request of
each of a claim's positions): a thousand followers closing on one signal is a thousand
exits committed at once.

What :meth:`Requests.start` and :meth:`Driver.drive` do for one request, done for many
with a statement per step instead of a statement per request per step:

1. the requests read, and which have an order made already (one statement each);
2. an exit whose position has orders in flight (a working entry, a resting stop-loss or
   take-profit) has them cancelled first, one position at a time, as one by one
   (``Protection.cancel_entry``, ``cancel_protection``); then the crash point
   ``exit.protection_cancelled``, once;
3. each request planned (``Requests.plan``: its filters, the quantity and purpose of its
   order; each symbol's price read once for the batch);
4. **one transaction**: the refused requests rejected with their reason, the orders of the
   others inserted, and the positions of full exits moved to ``closing`` (compare-and-set);
5. the orders sent and their answers recorded in one transaction, then each order's
   follow-ups (``batch_sends.py``).

The crash-safety rules and the crash points are the one-request path's. What the batch
does not cover goes through the one-request code on the same connection
(``drive_one``): a request no longer pending or whose order exists (a retry after a
crash), and a position with orders still in flight after step 2 (a scale-in beside its
resting protection: one by one it drives those orders too). A failure of one request's
step is that position's result; a failure of a shared step is every position's of that
step, and their events are retried.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from worker.exchanges.budget import Priority, urgent
from worker.execution.batch_sends import BatchSends, Results, Started, caught, log_foreign, ms
from worker.execution.client_ids import client_order_id
from worker.execution.context import Context
from worker.execution.locks import load_positions
from worker.execution.protection import Protection
from worker.execution.recording_batch import finish_requests, move_positions
from worker.execution.requests import NOTHING_TO_EXIT, Requests
from worker.execution.rows import Conn, Order, Position, Request, fetch_all, fetch_column

DriveRequest = Callable[[Conn, Position, str], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class _Planned:
    position: Position
    request: Request
    problem: str | None
    quantity: Decimal
    purpose: str


class RequestBatch:
    def __init__(
        self, ctx: Context, requests: Requests, protection: Protection, sends: BatchSends
    ) -> None:
        self.ctx, self.requests, self.protection, self.sends = ctx, requests, protection, sends

    async def run(
        self, conn: Conn, items: Sequence[tuple[Position, str]], drive_one: DriveRequest
    ) -> Results:
        """Handle each ``(position, request id)`` (the positions' locks held on ``conn``);
        each position's result: None, or what failed it."""
        results: Results = {}
        await log_foreign(self.ctx, conn, [p for p, _ in items])
        fresh, alone = await self._fresh(conn, items)
        fresh = await self._clear_exits(conn, fresh, results)
        in_flight = await _in_flight(conn, [p for p, _ in fresh])
        alone += [(p, str(r.id)) for p, r in fresh if p.id in in_flight]
        fresh = [(p, r) for p, r in fresh if p.id not in in_flight]
        made = await self._make_orders(conn, fresh, results) if fresh else []
        if made:
            await self.sends.send_and_record(conn, made, results, "request_batch_recorded")
        for position, request_id in alone:
            results[position.id] = await caught(drive_one(conn, position, request_id))
        for position, _ in fresh:  # what the one-request path ends with (paper: nothing)
            if results.get(position.id) is None and not position.is_paper_trade:
                results[position.id] = await caught(self.protection.protect(conn, position))
        return results

    async def _fresh(
        self, conn: Conn, items: Sequence[tuple[Position, str]]
    ) -> tuple[list[tuple[Position, Request]], list[tuple[Position, str]]]:
        """The pending requests no order was made for yet, with their positions; the rest
        (for the one-request path)."""
        ids = [uuid.UUID(request_id) for _, request_id in items]
        rows = await fetch_all(conn, Request, "exec_requests", request_ids=ids)
        found = {r.id: r for r in rows}
        started = set(await fetch_column(conn, "exec_requests_started", request_ids=ids))
        fresh: list[tuple[Position, Request]] = []
        alone: list[tuple[Position, str]] = []
        for (position, request_id), key in zip(items, ids, strict=True):
            request = found.get(key)
            if (
                request is None
                or request.status != "pending"
                or request.id in started
                or request.position_id != position.id
            ):
                alone.append((position, request_id))
            else:
                fresh.append((position, request))
        return fresh, alone

    async def _clear_exits(
        self, conn: Conn, fresh: list[tuple[Position, Request]], results: Results
    ) -> list[tuple[Position, Request]]:
        """Cancel what is working on the positions of full exits (a resting entry, the
        protection: :meth:`Requests.clear_for_exit`), one position at a time; those
        positions re-read. An exit whose entry ended with nothing filled is done (nothing
        to exit)."""
        exits = [(p, r) for p, r in fresh if r.kind == "exit"]
        if not exits:
            return fresh
        busy = await _in_flight(conn, [p for p, _ in exits])
        cleared: set[uuid.UUID] = set()
        failed: set[uuid.UUID] = set()
        for position, _ in exits:
            if position.id not in busy:
                continue
            with urgent(Priority.EXIT):
                error = await caught(self.requests.clear_for_exit(conn, position))
            if error is not None:
                results[position.id] = error
                failed.add(position.id)
            else:
                cleared.add(position.id)
        self.ctx.crash_point("exit.protection_cancelled")
        fresh = [(p, r) for p, r in fresh if p.id not in failed]
        if not cleared:
            return fresh
        now = {p.id: p for p in await load_positions(conn, [str(i) for i in cleared])}
        out: list[tuple[Position, Request]] = []
        done: list[tuple[uuid.UUID, str, str | None, uuid.UUID | None]] = []
        for position, request in fresh:
            position = now.get(position.id, position)
            if position.status == "failed" and request.kind == "exit":
                done.append((request.id, "done", NOTHING_TO_EXIT, None))
                results[position.id] = None
            else:
                out.append((position, request))
        if done:
            async with conn.transaction():
                await finish_requests(conn, done)
        return out

    async def _make_orders(
        self, conn: Conn, fresh: list[tuple[Position, Request]], results: Results
    ) -> list[Started]:
        """Plan each request, then in one transaction: the refused rejected, the orders of
        the others recorded, the positions of full exits moved to ``closing``."""
        began = time.monotonic()
        prices: dict[str, Decimal] = {}
        planned: list[_Planned] = []
        for position, request in fresh:
            try:
                with urgent(Priority.ENTRY if request.kind == "scale_in" else Priority.EXIT):
                    problem, qty, purpose = await self.requests.plan(position, request, prices)
            except Exception as exc:  # its exchange unavailable, ...: its event is retried
                results[position.id] = exc
                continue
            planned.append(_Planned(position, request, problem, qty, purpose))
        if not planned:
            return []
        planned_at = time.monotonic()
        accepted = [p for p in planned if p.problem is None]
        refused = [p for p in planned if p.problem is not None]
        try:
            async with conn.transaction():
                rejected = [(p.request.id, "rejected", p.problem, None) for p in refused]
                await finish_requests(conn, rejected)
                orders = await self._insert_orders(conn, accepted)
                goals: list[tuple[Position, str, str | None, str | None]] = [
                    (p.position, "closing", None, p.request.reason)
                    for p in accepted
                    if p.purpose == "exit"
                ]
                await move_positions(conn, goals)
        except Exception as exc:
            for item in planned:
                results[item.position.id] = exc
            return []
        self.ctx.log.info(
            "request_batch",
            requests=len(planned),
            orders=len(accepted),
            plan_ms=ms(planned_at - began),
            intents_ms=ms(time.monotonic() - planned_at),
        )
        for item in refused:
            results[item.position.id] = None
            self.ctx.log.warning(
                "request_rejected", request_id=str(item.request.id), error=item.problem
            )
        started = []
        for item, order in zip(accepted, orders, strict=True):
            position = item.position
            if item.purpose == "exit":
                position = replace(position, status="closing")
            exchange = await self.ctx.router.for_position(position)
            started.append(Started(position, order, exchange))
        return started

    async def _insert_orders(self, conn: Conn, accepted: list[_Planned]) -> list[Order]:
        """The accepted requests' market orders (ids drawn here: the client order ids are
        made from them), in ``accepted``'s order."""
        if not accepted:
            return []
        ids = [uuid.uuid4() for _ in accepted]
        columns: dict[str, list[Any]] = {
            "id": ids,
            "position_id": [p.position.id for p in accepted],
            "user_id": [p.position.user_id for p in accepted],
            "client_order_id": [
                client_order_id(i, p.purpose) for i, p in zip(ids, accepted, strict=True)
            ],
            "symbol": [p.position.symbol for p in accepted],
            "side": [
                p.position.exit_side if p.request.kind == "exit" else p.position.entry_side
                for p in accepted
            ],
            "quantity": [p.quantity for p in accepted],
            "quote_quantity": [p.request.quote_quantity for p in accepted],
            "purpose": [p.purpose for p in accepted],
            "is_paper_trade": [p.position.is_paper_trade for p in accepted],
            "request_id": [p.request.id for p in accepted],
        }
        orders = await fetch_all(conn, Order, "exec_insert_request_orders", **columns)
        if len(orders) != len(accepted):
            raise RuntimeError("the batch's request orders were not all recorded")
        return orders


async def _in_flight(conn: Conn, positions: Sequence[Position]) -> set[uuid.UUID]:
    """Which of ``positions`` have one of the worker's orders not final yet."""
    if not positions:
        return set()
    ids = [p.id for p in positions]
    return set(await fetch_column(conn, "exec_positions_with_orders_in_flight", position_ids=ids))
