"""The execution engine: drives positions through the exchange, safely.

Rules that make it crash-safe and replica-safe:

* **One actor per position.** Every action on a position (entry, exit, reconcile) runs
  while holding that position's session advisory lock, exchange calls included; a crashed
  process's lock dies with its connection.
* **Intent before send.** An order row with its client order id (made from the row's uuid,
  drawn here: ``rules.client_order_id``) is committed before the order is sent, and
  ``send_attempts`` is bumped (committed) right before each send. An order with
  ``send_attempts > 0`` may exist on the exchange: it is looked up by client order id
  first, and re-sent only after it was missing for ``missing_lookups_before_resend``
  lookups in a row.
* **Outcome unknown is not failure.** Timeouts, 5xx, -1006/-1007 leave the order as it is;
  the reconciler looks it up later. Only a definitive rejection marks it failed.
* **The database decides.** Fills are recorded with the position's figures refolded from all
  of its fills; the triggers turn every change into events for the pipeline.
* **Only the worker's own orders.** Every read of a position's orders keeps the rows the
  worker wrote (``rules.is_worker_order``; in SQL the ``own`` CTE): a row written by anyone
  else is never sent, cancelled, driven, counted or waited for, only logged
  (``foreign_order_ignored``, once per drive).
* **Protection follows the holding.** Stop-loss / take-profit orders are placed after every
  change of the holding; a crash in between is repaired by the watcher
  (:meth:`Engine.restore_protection`).

``crashpoint("<purpose>.<step>")`` calls mark each step for the kill -9 tests
(``worker/testing/crashpoints.py``); they do nothing unless ``POSITION_WORKER_CRASH_AT`` is set.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from worker.accounting import Market
from worker.db.queries import q
from worker.errors import WorkerError
from worker.exchanges.base import (
    Exchange,
    ExchangeError,
    ExchangeFill,
    OcoRequest,
    OrderRejected,
    OrderRequest,
    OrderState,
    UnknownOrder,
)
from worker.exchanges.filters import check_order, round_quantity
from worker.execution.exchanges import ExchangeRouter, NotConfigured
from worker.execution.recorder import (
    Row,
    record,
    record_rejection,
    set_order_status,
    set_position_status,
)
from worker.execution.rules import (
    FINAL_ORDER,
    PROTECTIVE,
    client_order_id,
    entry_problem,
    entry_side,
    exit_side,
    is_worker_order,
    oco_list_id,
    oco_partner,
    order_status_for,
    protection_plan,
    stop_price,
)
from worker.testing.crashpoints import crashpoint


class PositionBusy(WorkerError):
    """Another actor holds the position right now; the caller retries later."""


Conn = psycopg.AsyncConnection[Any]


class Engine:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        router: ExchangeRouter,
        *,
        resend_after: int,
        log: Any,
    ) -> None:
        self.pool, self.router, self.resend_after, self.log = pool, router, resend_after, log

    # -- locking and loading -------------------------------------------------------------
    @asynccontextmanager
    async def locked(self, position_id: str, *, wait: bool = False) -> AsyncIterator[Conn]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(q("exec_try_lock_position"), {"position_id": position_id})
            row = await cur.fetchone()
            if not row or not row[0]:
                raise PositionBusy(f"position {position_id} is being handled elsewhere")
            try:
                yield conn
            finally:
                await conn.execute(q("exec_unlock_position"), {"position_id": position_id})

    async def _row(self, conn: Conn, name: str, **params: Any) -> Row | None:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(q(name), params)
        row: Row | None = await cur.fetchone()
        return row

    async def _rows(self, conn: Conn, name: str, **params: Any) -> list[Row]:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(q(name), params)
        rows: list[Row] = await cur.fetchall()
        return rows

    async def _orders(self, conn: Conn, position_id: Any) -> list[Row]:
        """The position's orders the worker wrote itself, oldest first (the stop-loss leg of
        an OCO pair before its take-profit leg)."""
        rows = await self._rows(conn, "exec_orders_of_position", position_id=position_id)
        return [o for o in rows if is_worker_order(o["id"], o["purpose"], o["client_order_id"])]

    async def _log_foreign(self, conn: Conn, position: Row) -> None:
        """Log the position's order rows the worker did not write (they are ignored)."""
        pid = position["id"]
        for row in await self._rows(conn, "exec_foreign_orders_of_position", position_id=pid):
            self.log.warning("foreign_order_ignored", order_id=str(row["id"]), position_id=str(pid))

    async def _position(self, conn: Conn, position_id: str) -> Row:
        row = await self._row(conn, "exec_position", position_id=position_id)
        if row is None:
            raise WorkerError(f"position {position_id} does not exist")
        return row

    # -- entry -----------------------------------------------------------------------------
    async def enter(self, position_id: str) -> None:
        """A new position: validate, record the entry order, send it, record the outcome."""
        async with self.locked(position_id) as conn:
            position = await self._position(conn, position_id)
            if position["status"] == "created":
                await self._start_entry(conn, position)
            await self.drive_open_orders(conn, position)

    async def _start_entry(self, conn: Conn, position: Row) -> None:
        problem, quantity = await self._entry_check(position)
        if problem is not None:
            async with conn.transaction():
                await set_position_status(conn, position, "failed", reason=problem)
            self.log.warning("entry_refused", position_id=str(position["id"]), reason=problem)
            return
        async with conn.transaction():
            await self._new_order(
                conn,
                position,
                "entry",
                entry_side(position["side"]),
                "limit" if position["limit_price"] else "market",
                quantity,
                quote=position["requested_quote"],
                price=position["limit_price"],
            )
            await set_position_status(conn, position, "submitting")

    async def _entry_check(self, position: Row) -> tuple[str | None, Decimal]:
        try:
            exchange = self.router.for_position(position)
            rules = await exchange.symbol_rules(position["symbol"])
            price = position["limit_price"] or await exchange.price(position["symbol"])
        except NotConfigured as exc:
            return str(exc), Decimal(0)
        except OrderRejected as exc:
            return f"{position['symbol']}: {exc}", Decimal(0)
        quote = position["requested_quote"]
        problem = entry_problem(
            position["side"],
            price,
            quantity=position["requested_quantity"],
            quote=quote,
            stop_loss=position["stop_loss_price"],
            take_profit=position["take_profit_price"],
        )
        if problem is not None:
            return problem, Decimal(0)
        qty = round_quantity(rules, position["requested_quantity"] or quote / price)
        try:
            check_order(rules, qty, price, quote_quantity=quote)
        except OrderRejected as exc:
            return str(exc), Decimal(0)
        return None, qty

    async def _new_order(
        self,
        conn: Conn,
        position: Row,
        purpose: str,
        side: str,
        kind: str,
        quantity: Decimal,
        *,
        quote: Decimal | None = None,
        price: Decimal | None = None,
        stop: Decimal | None = None,
        request_id: Any = None,
    ) -> Row:
        order_id = uuid.uuid4()
        params = {
            "id": order_id,
            "position_id": position["id"],
            "user_id": position["user_id"],
            "client_order_id": client_order_id(order_id, purpose),
            "symbol": position["symbol"],
            "side": side,
            "type": kind,
            "quantity": quantity,
            "quote_quantity": quote,
            "price": price,
            "stop_price": stop,
            "purpose": purpose,
            "is_paper_trade": bool(position["is_paper_trade"]),
            "request_id": request_id,
        }
        order = await self._row(conn, "exec_insert_order", **params)
        assert order is not None
        return order

    # -- driving orders ---------------------------------------------------------------------
    async def drive_open_orders(self, conn: Conn, position: Row) -> None:
        await self._log_foreign(conn, position)
        if position["status"] in ("closed", "failed"):
            # nothing may stay resting after a close (e.g. a stop's sibling, if the worker
            # stopped between recording the fill and cancelling it)
            await self.cancel_protection(conn, position)
            return
        for order in await self._orders(conn, position["id"]):
            if order["status"] not in FINAL_ORDER:
                await self.drive(conn, position, order)
        await self.protect(conn, position)  # put back what a failed exit or the exchange took

    async def drive(self, conn: Conn, position: Row, order: Row) -> None:
        """Bring one order up to date with the exchange (sending it if it never was).
        A leg of an OCO pair (``rules.oco_partner``) not yet known on the exchange is
        sent, or reconciled, together with its partner (:meth:`_drive_leg`). A row the
        worker did not write is left alone."""
        if not is_worker_order(order["id"], order["purpose"], order["client_order_id"]):
            return
        if order["status"] == "created" and order["purpose"] in PROTECTIVE:
            rows = await self._orders(conn, position["id"])
            fresh = next((o for o in rows if o["id"] == order["id"]), order)
            if fresh["status"] != "created":
                return  # driven a moment ago with its OCO partner
            partner = oco_partner(rows, fresh)
            if partner is not None:
                await self._drive_leg(conn, position, fresh, dict(partner))
                return
        exchange = self.router.for_position(position)
        try:
            state = await self._current_state(conn, exchange, order)
            if state is None and order["status"] == "created":
                state = await self._send(conn, position, order, exchange)
                crashpoint(f"{order['purpose']}.sent")
        except OrderRejected as exc:
            async with conn.transaction():
                await record_rejection(conn, position, order, exc.code, exc.msg)
                await self._finish_request(conn, order, "rejected", str(exc))
            self.log.warning("order_rejected", order_id=str(order["id"]), error=str(exc))
            return
        except ExchangeError as exc:  # outcome unknown, rate limited: look again later
            self._outcome_unknown(order, exc)
            return
        if state is not None:
            await self._record(conn, exchange, position, order, state)

    def _outcome_unknown(self, order: Row, exc: Exception, **extra: Any) -> None:
        """Outcome unknown or rate limited: the order is looked at again on the next pass."""
        self.log.warning(
            "order_outcome_unknown",
            order_id=str(order["id"]),
            client_order_id=order["client_order_id"],
            error=str(exc),
            **extra,
        )

    async def _current_state(self, conn: Conn, exchange: Exchange, order: Row) -> OrderState | None:
        """The exchange's view of an order that may exist; None when it should be sent now."""
        if order["status"] == "created" and order["send_attempts"] == 0:
            return None
        state = await exchange.get_order(order["symbol"], order["client_order_id"])
        if state is not None:
            return state
        row = await self._row(conn, "exec_bump_missing", order_id=order["id"])
        misses = int(row["missing_lookups"]) if row else 0
        if order["status"] == "created" and misses >= self.resend_after:
            return None  # never arrived: safe to send with the same client id
        raise _LookLater(f"order {order['client_order_id']} not visible yet ({misses} lookups)")

    async def _send(self, conn: Conn, position: Row, order: Row, exchange: Exchange) -> OrderState:
        crashpoint(f"{order['purpose']}.committed")
        await conn.execute(q("exec_bump_send"), {"order_id": order["id"]})
        request = OrderRequest(
            symbol=order["symbol"],
            side=order["side"],
            type=order["type"],
            client_order_id=order["client_order_id"],
            quantity=None if order["quote_quantity"] else order["quantity"],
            quote_quantity=order["quote_quantity"],
            price=order["price"],
            stop_price=order["stop_price"],
        )
        self.log.info(
            "order_sending",
            order_id=str(order["id"]),
            position_id=str(position["id"]),
            client_order_id=order["client_order_id"],
            purpose=order["purpose"],
            side=order["side"],
            quantity=str(order["quantity"]),
        )
        return await exchange.place_order(request)

    # -- OCO pairs (a stop-loss and a take-profit placed as one order list) -----------------
    async def _drive_leg(self, conn: Conn, position: Row, order: Row, partner: Row) -> None:
        """A created OCO leg. With its partner also created the pair is sent (or, sent
        before, reconciled) as one list. Otherwise the list reached the exchange (its other
        leg is known there), so this leg exists too: look it up, never send it alone."""
        if partner["status"] == "created":
            stop, take = (order, partner) if order["purpose"] == "stop_loss" else (partner, order)
            await self._drive_pair(conn, position, stop, take)
            return
        exchange = self.router.for_position(position)
        try:
            state = await exchange.get_order(order["symbol"], order["client_order_id"])
            if state is None:
                await self._row(conn, "exec_bump_missing", order_id=order["id"])
                raise _LookLater(f"OCO leg {order['client_order_id']} not visible yet")
        except ExchangeError as exc:
            self._outcome_unknown(order, exc)
            return
        await self._record(conn, exchange, position, order, state)

    async def _drive_pair(self, conn: Conn, position: Row, stop: Row, take: Row) -> None:
        """Send a stop-loss and a take-profit as one OCO list, or bring a list that may
        exist up to date; a rejection fails both legs."""
        exchange = self.router.for_position(position)
        try:
            states = await self._pair_states(conn, exchange, stop, take)
            if states is None:
                states = await self._send_pair(conn, position, stop, take, exchange)
                crashpoint("stop_loss.sent")
                crashpoint("take_profit.sent")
        except OrderRejected as exc:
            async with conn.transaction():
                for leg in (stop, take):
                    await record_rejection(conn, position, leg, exc.code, exc.msg)
            self.log.warning(
                "order_rejected", order_id=str(stop["id"]), oco=str(take["id"]), error=str(exc)
            )
            return
        except ExchangeError as exc:  # outcome unknown, rate limited: look again later
            self._outcome_unknown(stop, exc, oco=take["client_order_id"])
            return
        found = {s.client_order_id: s for s in states}
        for leg in (stop, take):
            state = found.get(leg["client_order_id"])
            if state is not None:
                await self._record(conn, exchange, position, leg, state)

    async def _pair_states(
        self, conn: Conn, exchange: Exchange, stop: Row, take: Row
    ) -> tuple[OrderState, ...] | None:
        """The exchange's view of a pair that may have been sent; None: send it now. The
        legs are created together, so one leg found means the list exists; it is sent
        again only when neither was found for ``resend_after`` lookups in a row."""
        if stop["send_attempts"] == 0 and take["send_attempts"] == 0:
            return None
        states = []
        for leg in (stop, take):
            state = await exchange.get_order(leg["symbol"], leg["client_order_id"])
            if state is not None:
                states.append(state)
        if states:
            return tuple(states)
        misses = []
        for leg in (stop, take):
            row = await self._row(conn, "exec_bump_missing", order_id=leg["id"])
            misses.append(int(row["missing_lookups"]) if row else 0)
        if min(misses) >= self.resend_after:
            return None  # never arrived: safe to send with the same client ids
        raise _LookLater(f"OCO {stop['client_order_id']} not visible yet ({min(misses)} lookups)")

    async def _send_pair(
        self, conn: Conn, position: Row, stop: Row, take: Row, exchange: Exchange
    ) -> tuple[OrderState, ...]:
        crashpoint("stop_loss.committed")
        async with conn.transaction():
            for leg in (stop, take):
                await conn.execute(q("exec_bump_send"), {"order_id": leg["id"]})
        request = OcoRequest(
            symbol=stop["symbol"],
            side=stop["side"],
            quantity=stop["quantity"],
            list_client_order_id=oco_list_id(stop["id"]),
            stop_client_order_id=stop["client_order_id"],
            stop_price=stop["stop_price"],
            take_profit_client_order_id=take["client_order_id"],
            take_profit_price=take["stop_price"],
        )
        self.log.info(
            "oco_sending",
            position_id=str(position["id"]),
            list_client_order_id=request.list_client_order_id,
            stop_client_order_id=request.stop_client_order_id,
            take_profit_client_order_id=request.take_profit_client_order_id,
            side=stop["side"],
            quantity=str(stop["quantity"]),
        )
        return await exchange.place_oco(request)

    async def _record(
        self, conn: Conn, exchange: Exchange, position: Row, order: Row, state: OrderState
    ) -> None:
        if _unchanged(order, state):
            return  # nothing new on the exchange: no write, no row lock
        fills = await self._new_fills(conn, exchange, order, state)
        rules = await exchange.symbol_rules(order["symbol"])
        market = Market(rules.base_asset, rules.quote_asset)
        third = await self._third_prices(exchange, fills, market)
        async with conn.transaction():
            outcome = await record(
                conn, position, order, state, fills, market, third, dust=rules.step_size
            )
            if outcome.order_status in FINAL_ORDER:
                error = None if state.executed_qty > 0 else f"order {state.status.lower()}"
                await self._finish_request(conn, order, "done", error)
        await self._after(conn, position, order, outcome.order_status, outcome.position_status)

    async def _new_fills(
        self, conn: Conn, exchange: Exchange, order: Row, state: OrderState
    ) -> list[ExchangeFill]:
        """The order's fills not recorded yet. Fetched from after the last recorded trade
        (the whole list again if those fall short: a trade listed late, out of order); the
        trade list can lag the order, so an order is never settled on fewer fills than it
        executed: look again later."""
        cur = await conn.execute(q("exec_trades_of_order"), {"order_id": order["id"]})
        known = {str(r[0]): Decimal(r[1]) for r in await cur.fetchall()}
        recorded = sum(known.values(), Decimal(0))

        def fresh(fills: list[ExchangeFill]) -> list[ExchangeFill]:
            return [f for f in fills if f.trade_id not in known]

        def short(fills: list[ExchangeFill]) -> bool:
            return recorded + _listed(fresh(fills)) < state.executed_qty

        fills = list(state.fills)
        if short(fills) and state.exchange_order_id:
            after = _last_trade_id(known)
            symbol, exchange_id = order["symbol"], state.exchange_order_id
            fills = await exchange.get_fills(symbol, exchange_id, after=after)
            if short(fills) and after is not None:
                fills = await exchange.get_fills(symbol, exchange_id)
        if short(fills):
            raise _LookLater(
                f"order {order['client_order_id']}: {recorded + _listed(fresh(fills))} of "
                f"{state.executed_qty} executed is listed in its trades so far"
            )
        return fresh(fills)

    async def _third_prices(
        self, exchange: Exchange, fills: list[ExchangeFill], market: Market
    ) -> dict[str, Decimal]:
        prices: dict[str, Decimal] = {}
        for fill in fills:
            asset = fill.commission_asset.upper()
            if market.role_of(asset) == "other" and asset not in prices and fill.commission:
                prices[asset] = await exchange.price(f"{asset}{market.quote_asset}")
        return prices

    async def _finish_request(self, conn: Conn, order: Row, status: str, error: str | None) -> None:
        if order.get("request_id"):
            await conn.execute(
                q("exec_finish_request"),
                {
                    "request_id": order["request_id"],
                    "status": status,
                    "error": error,
                    "order_id": order["id"],
                },
            )

    async def _after(
        self, conn: Conn, position: Row, order: Row, order_status: str, position_status: str | None
    ) -> None:
        """Follow-ups once an order settled: protect a new position, drop protection that
        is no longer needed (nothing left resting after a close)."""
        if order_status not in FINAL_ORDER:
            return
        crashpoint(f"{order['purpose']}.settled")
        if position["status"] in ("closed", "failed"):
            await self.cancel_protection(conn, position)
        elif position_status == "open" and order["purpose"] == "entry":
            await self.protect(conn, position)
        elif order["purpose"] in ("scale_in", "scale_out") and position["status"] != "closing":
            await self.cancel_protection(conn, position)
            await self.protect(conn, position)

    # -- protection (exchange-side stop-loss / take-profit; paper: see watcher) -----------
    async def protect(self, conn: Conn, position: Row) -> None:
        """Place the stop-loss / take-profit orders an open position is missing: one live
        order per kind with a price set, sized by what is held (net of base-asset fees,
        floored to the step size), each recorded with a fresh client order id before it is
        sent. Calling it again (after a crash, on every reconcile pass) places only what is
        missing; nothing while an exit is pending (``rules.protection_plan``)."""
        if position["is_paper_trade"]:
            return  # the paper exchange watches its price feed (worker/execution/watcher.py)
        position.update(await self._position(conn, str(position["id"])))
        if position["status"] not in ("open", "monitoring"):
            return
        pending = await self._rows(
            conn, "exec_pending_requests_of_position", position_id=position["id"]
        )
        if any(r["kind"] == "exit" for r in pending):
            return  # an exit is on its way: protection would only be cancelled again
        exchange = self.router.for_position(position)
        rules = await exchange.symbol_rules(position["symbol"])
        qty = round_quantity(rules, position["held_quantity"] or Decimal(0))
        if qty <= 0:
            return
        orders = await self._orders(conn, position["id"])
        stops = {
            "stop_loss": stop_price(position, rules),
            "take_profit": position["take_profit_price"],
        }
        _, missing = protection_plan(orders, stops["stop_loss"], stops["take_profit"], qty)
        if missing:
            self.log.info("protection_placing", position_id=str(position["id"]), kinds=missing)
        if len(missing) == 2:  # both: one OCO list (two SELLs of the holding cannot both rest)
            async with conn.transaction():  # one transaction: the legs share created_at
                legs = [
                    await self._new_order(
                        conn, position, p, exit_side(position["side"]), p, qty, stop=stops[p]
                    )
                    for p in ("stop_loss", "take_profit")
                ]
            await self._drive_pair(conn, position, legs[0], legs[1])
            return
        for purpose in missing:
            stop = stops[purpose]
            async with conn.transaction():
                order = await self._new_order(
                    conn, position, purpose, exit_side(position["side"]), purpose, qty, stop=stop
                )
            await self.drive(conn, position, order)

    async def restore_protection(self, position_id: str) -> None:
        """The reconciler's way in, for a live position held without the protection it asks
        for (the worker stopped between changing the holding and protecting it; an exit that
        failed; a protective order cancelled or expired on the exchange). Cancel what still
        rests for an earlier holding, place what is missing. Left alone while any other
        order of the position is in flight."""
        async with self.locked(position_id) as conn:
            position = await self._position(conn, position_id)
            await self._log_foreign(conn, position)
            orders = await self._orders(conn, position_id)
            busy = any(
                o["status"] not in FINAL_ORDER and o["purpose"] not in PROTECTIVE for o in orders
            )
            if (
                busy
                or position["is_paper_trade"]
                or position["status"] not in ("open", "monitoring")
            ):
                return
            stale, missing = protection_plan(
                orders, stop_price(position, None), position["take_profit_price"]
            )
            if not missing and not stale:
                return
            self.log.warning(
                "protection_restoring", position_id=position_id, stale=len(stale), missing=missing
            )
            await self._cancel(conn, position, [dict(o) for o in stale])
            await self.protect(conn, position)

    async def cancel_protection(self, conn: Conn, position: Row) -> None:
        """Cancel resting stop-loss / take-profit orders; record one that filled meanwhile."""
        await self._cancel_working(conn, position, PROTECTIVE)

    async def cancel_entry(self, conn: Conn, position: Row) -> None:
        """Cancel an entry still working (a resting limit order); what it filled is kept, so
        the position opens with that (or fails when nothing filled)."""
        await self._cancel_working(conn, position, ("entry",))

    async def _cancel(self, conn: Conn, position: Row, stale: list[Row]) -> None:
        """Cancel these protective orders (left from an earlier holding)."""
        await self._cancel_working(conn, position, PROTECTIVE, only={o["id"] for o in stale})

    async def _cancel_working(
        self,
        conn: Conn,
        position: Row,
        purposes: tuple[str, ...],
        only: set[Any] | None = None,
    ) -> None:
        """Cancel the position's orders of ``purposes`` that are not final, one at a time and
        re-read each time (recording one can settle another: a filled stop cancels its
        sibling). A cancel answered "unknown order" may have raced a fill: the order is
        looked up and what the exchange says is recorded, never the cancel assumed."""
        tried: set[Any] = set()
        while True:
            rows = await self._orders(conn, position["id"])
            order = next(
                (
                    o
                    for o in rows
                    if o["purpose"] in purposes
                    and o["status"] not in FINAL_ORDER
                    and o["id"] not in tried
                    and (only is None or o["id"] in only)
                ),
                None,
            )
            if order is None:
                return
            tried.add(order["id"])
            exchange = self.router.for_position(position)
            state = await self._cancelled_state(conn, exchange, position, order)
            if state is not None:
                await self._record(conn, exchange, position, order, state)

    async def _cancelled_state(
        self, conn: Conn, exchange: Exchange, position: Row, order: Row
    ) -> OrderState | None:
        """The order's state once cancelled, or None when it is settled without one."""
        try:
            return await exchange.cancel_order(order["symbol"], order["client_order_id"])
        except UnknownOrder:
            found = await exchange.get_order(order["symbol"], order["client_order_id"])
        if found is not None:
            return found
        if order["purpose"] == "entry" and order["send_attempts"] > 0:
            raise _LookLater(f"entry {order['client_order_id']} may still arrive: cancel it later")
        async with conn.transaction():  # never reached the exchange: cancelled here
            await set_order_status(conn, order, "cancelled")
            if order["purpose"] == "entry" and position["status"] == "submitting":
                reason = "entry cancelled before it was sent"
                await set_position_status(conn, position, "failed", reason=reason)
        return None

    # -- requests (exit, scale-in) ------------------------------------------------------------
    async def handle_request(self, position_id: str, request_id: str) -> None:
        async with self.locked(position_id) as conn:
            request = await self._row(conn, "exec_request", request_id=request_id)
            started = await self._row(conn, "exec_order_of_request", request_id=request_id)
            if request is not None and request["status"] == "pending" and started is None:
                # refused or nothing to do (None): what follows still puts back protection
                await self._start_request(conn, request)
            position = await self._position(conn, position_id)
            await self.drive_open_orders(conn, position)

    async def _start_request(self, conn: Conn, request: Row) -> Row | None:
        position = await self._position(conn, str(request["position_id"]))
        if request["kind"] == "exit":
            if position["status"] == "submitting":  # abandon the entry, sell what it bought
                await self.cancel_entry(conn, position)
            await self.cancel_protection(conn, position)
            crashpoint("exit.protection_cancelled")
            position = await self._position(conn, str(request["position_id"]))
            if position["status"] == "failed":
                error = "the entry ended with nothing filled: nothing to exit"
                async with conn.transaction():
                    await self._finish_request_row(conn, request, "done", error)
                return None
        problem, quantity, purpose = await self._request_plan(position, request)
        async with conn.transaction():
            if problem is not None:
                await self._finish_request_row(conn, request, "rejected", problem)
                self.log.warning("request_rejected", request_id=str(request["id"]), error=problem)
                return None
            side = (
                exit_side(position["side"])
                if request["kind"] == "exit"
                else entry_side(position["side"])
            )
            order = await self._new_order(
                conn,
                position,
                purpose,
                side,
                "market",
                quantity,
                quote=request["quote_quantity"],
                request_id=request["id"],
            )
            if purpose == "exit":
                await set_position_status(conn, position, "closing", close_reason=request["reason"])
        return order

    async def _finish_request_row(
        self, conn: Conn, request: Row, status: str, error: str | None
    ) -> None:
        params = {"request_id": request["id"], "status": status, "error": error, "order_id": None}
        await conn.execute(q("exec_finish_request"), params)

    async def _request_plan(self, position: Row, request: Row) -> tuple[str | None, Decimal, str]:
        if position["status"] not in ("open", "monitoring"):
            return f"position is {position['status']}", Decimal(0), ""
        exchange = self.router.for_position(position)
        rules = await exchange.symbol_rules(position["symbol"])
        held = position["held_quantity"] or Decimal(0)
        if request["kind"] == "scale_in":
            price = await exchange.price(position["symbol"])
            qty = round_quantity(rules, request["quantity"] or request["quote_quantity"] / price)
            return self._filters(rules, qty, price), qty, "scale_in"
        wanted = held if request["quantity"] is None else min(request["quantity"], held)
        qty = round_quantity(rules, wanted)
        purpose = (
            "exit"
            if request["quantity"] is None or qty >= round_quantity(rules, held)
            else "scale_out"
        )
        price = await exchange.price(position["symbol"])
        return self._filters(rules, qty, price), qty, purpose

    @staticmethod
    def _filters(rules: Any, qty: Decimal, price: Decimal) -> str | None:
        try:
            check_order(rules, qty, price)
        except OrderRejected as exc:
            return str(exc)
        return None


class _LookLater(ExchangeError):
    """The exchange does not show all of the order yet: look again on the next pass."""


def _listed(fills: list[ExchangeFill]) -> Decimal:
    return sum((f.qty for f in fills), Decimal(0))


def _unchanged(order: Row, state: OrderState) -> bool:
    """The exchange says nothing the order's row does not say already (same status, same
    executed quantity, all of it recorded): recording it again would only rewrite rows."""
    return bool(
        order["exchange_status"] == state.status
        and order["filled_quantity"] == state.executed_qty
        and order["status"] == order_status_for(state.status, state.executed_qty)
        and order["missing_lookups"] == 0
        and order["binance_order_id"] == (state.exchange_order_id or order["binance_order_id"])
    )


def _last_trade_id(known: dict[str, Decimal]) -> str | None:
    """The highest recorded trade id of an order, when the exchange numbers its trades."""
    numbered = [int(t) for t in known if t.isdigit()]
    return str(max(numbered)) if numbered else None
