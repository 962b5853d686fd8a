"""Protection: a live Binance position's exchange-side stop-loss / take-profit orders placed,
put back and cancelled, and what follows once one of the position's orders settled.

Protection follows the holding: it is placed after every change of the holding (sized by
what is held), replaced after a scale, cancelled before an exit and after a close. A crash
in between is repaired by the watcher (:meth:`Protection.restore`). Paper positions have
none here: the paper exchange watches its price feed (``worker/execution/watcher.py``).

Where it is enforced is on the position (``positions.protection``, an event and a
notification when it changes): ``exchange`` once the exchange acknowledged every order the
position asks for; ``worker`` when the exchange has no room for them (its per-symbol caps
on open algo orders and order lists, counted from the account's live orders and learnt from
its refusals: ``protection_plan.placement``) or refused them. A worker-protected position is
watched by the watcher (a crossed level: a market exit) and its orders are tried again on
every pass; it is ``exchange`` again only once the exchange acknowledged them.
Every method returns the position as it is afterwards.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from decimal import Decimal

from worker.db.queries import q
from worker.exchanges.base import Exchange, SymbolRules, UnknownOrder
from worker.exchanges.budget import Priority, urgent
from worker.exchanges.filters import round_quantity
from worker.execution.context import Context, LookLater
from worker.execution.locks import load_orders, load_position, log_foreign_orders
from worker.execution.orders import Driver, new_order
from worker.execution.protection_plan import (
    PROTECTIVE,
    Mode,
    Slots,
    placement,
    protection_plan,
    protection_state,
    refusal_caps,
    slots_of,
    stop_price,
)
from worker.execution.recording import Outcome
from worker.execution.rows import Conn, Order, Position, Request, fetch_all
from worker.execution.statuses import FINAL_ORDER, FINAL_POSITION, LIVE_POSITION
from worker.execution.transitions import set_order_status, set_position_status

SlotKey = tuple[uuid.UUID | None, str]  # (exchange account, symbol)


class Protection:
    def __init__(self, ctx: Context, driver: Driver) -> None:
        self.ctx, self.driver = ctx, driver
        # what the worker counted in use when the exchange last said "no room", per account
        # and symbol: no more than that is tried until fewer are in use
        self.full_at: dict[SlotKey, Slots] = {}

    async def protect(self, conn: Conn, position: Position) -> Position:
        """Place the stop-loss / take-profit orders an open position is missing: one live
        order per kind with a price set, sized by what is held (net of base-asset fees,
        floored to the step size), each recorded with a fresh client order id before it is
        sent. Calling it again (after a crash, on every reconcile pass) places only what is
        missing; nothing while an exit is pending (``protection_plan``). Where the exchange
        has no room, the position is protected by the worker (``positions.protection``)."""
        if position.is_paper_trade:
            return position  # the paper exchange watches its price feed (watcher.py)
        position = await load_position(conn, position.id)
        found = await self._to_protect(conn, position)
        if found is None:
            return position
        rules, qty, stops = found
        _, missing = protection_plan(
            await load_orders(conn, position.id), stops["stop_loss"], stops["take_profit"], qty
        )
        refused = await self._take_up_refusal(conn, position)
        if missing:
            slots = await self._slots(conn, position, rules)
            choice = placement(missing, position.exit_side, slots)
            if choice.mode == "worker":
                return await self._set_mode(conn, position, "worker", refused or choice.reason)
            self.ctx.log.info("protection_placing", position_id=str(position.id), kinds=missing)
            position = await self._place(
                conn, position, missing, qty, stops, choice.maker_take_profit
            )
            refused = await self._take_up_refusal(conn, position)
        mode = protection_state(await load_orders(conn, position.id), *stops.values())
        if mode is None:
            return position  # nothing asked for, or an order still on its way
        reason = refused or "the exchange refused the stop-loss / take-profit orders"
        return await self._set_mode(conn, position, mode, reason if mode == "worker" else None)

    async def _to_protect(
        self, conn: Conn, position: Position
    ) -> tuple[SymbolRules, Decimal, dict[str, Decimal | None]] | None:
        """The symbol's rules, the quantity to protect and the stop-loss / take-profit
        prices of a live position with a holding and no exit on its way; else None."""
        if position.status not in LIVE_POSITION:
            return None
        pending = await fetch_all(
            conn, Request, "exec_pending_requests_of_position", position_id=position.id
        )
        if any(r.kind == "exit" for r in pending):
            return None  # an exit is on its way: protection would only be cancelled again
        exchange = await self.ctx.router.for_position(position)
        rules = await exchange.symbol_rules(position.symbol)
        qty = round_quantity(rules, position.held_quantity or Decimal(0))
        if qty <= 0:
            return None
        stop, take = stop_price(position, rules), position.take_profit_price
        return rules, qty, {"stop_loss": stop, "take_profit": take}

    async def _counted(self, conn: Conn, position: Position) -> tuple[int, int]:
        """The worker's own live algo orders and order lists on the position's account and
        symbol."""
        cur = await conn.execute(
            q("exec_protection_slots"),
            {"symbol": position.symbol, "account_id": position.account_id},
        )
        row = await cur.fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def _slots(self, conn: Conn, position: Position, rules: SymbolRules) -> Slots:
        algo, lists = await self._counted(conn, position)
        learnt = self.full_at.get((position.account_id, position.symbol))
        return slots_of(algo, lists, rules, learnt)

    async def _take_up_refusal(self, conn: Conn, position: Position) -> str | None:
        """The exchange's last refusal of this position's orders for want of room (the
        driver notes it), learnt for the account and symbol; its message, or None."""
        refused = self.driver.no_room.pop(position.id, None)
        if refused is None:
            return None
        algo, lists = await self._counted(conn, position)
        self.full_at[(position.account_id, position.symbol)] = refusal_caps(
            algo, lists, refused.msg
        )
        return f"no room on the exchange: {refused.msg}"

    async def _set_mode(
        self, conn: Conn, position: Position, mode: Mode, reason: str | None
    ) -> Position:
        """Record where the position's protection is enforced (an event when it changes)."""
        if position.protection == mode:
            return position
        await conn.execute(
            q("exec_set_protection"),
            {"position_id": position.id, "mode": mode, "reason": reason},
        )
        level = self.ctx.log.warning if mode == "worker" else self.ctx.log.info
        level("protection_mode", position_id=str(position.id), mode=mode, reason=reason)
        return replace(position, protection=mode)

    async def _place(
        self,
        conn: Conn,
        position: Position,
        kinds: list[str],
        qty: Decimal,
        stops: dict[str, Decimal | None],
        maker_take_profit: bool = False,
    ) -> Position:
        """Record and send the protective orders of ``kinds`` for ``qty``: both as one OCO
        list (two SELLs of the holding cannot both rest), the take-profit leg a LIMIT_MAKER
        at its price with ``maker_take_profit`` (its row has that limit price); a single one
        on its own."""
        side = position.exit_side
        if len(kinds) == 2:
            tp_price = stops["take_profit"] if maker_take_profit else None
            async with conn.transaction():  # one transaction: the legs share created_at
                legs = [
                    await new_order(
                        conn, position, p, side, p, qty, stop=stops[p],
                        price=tp_price if p == "take_profit" else None,
                    )
                    for p in ("stop_loss", "take_profit")
                ]  # fmt: skip
            return await self.driver.drive_pair(conn, position, legs[0], legs[1])
        for kind in kinds:
            async with conn.transaction():
                order = await new_order(conn, position, kind, side, kind, qty, stop=stops[kind])
            position = await self.driver.drive(conn, position, order)
        return position

    async def restore(self, conn: Conn, position: Position) -> None:
        """The reconciler's way in, for a live position held without the protection it asks
        for (the worker stopped between changing the holding and protecting it; an exit that
        failed; a protective order cancelled or expired on the exchange). Cancel what still
        rests for an earlier holding, place what is missing. Left alone while any other
        order of the position is in flight."""
        await log_foreign_orders(conn, position, self.ctx.log)
        orders = await load_orders(conn, position.id)
        busy = any(o.status not in FINAL_ORDER and o.purpose not in PROTECTIVE for o in orders)
        if busy or position.is_paper_trade or position.status not in LIVE_POSITION:
            return
        stale, missing = protection_plan(
            orders, stop_price(position, None), position.take_profit_price
        )
        if not missing and not stale:
            return
        if position.protection != "worker" or stale:  # a worker-protected one: every pass
            self.ctx.log.warning(
                "protection_restoring",
                position_id=str(position.id),
                stale=len(stale),
                missing=missing,
            )
        only = {o.id for o in stale}  # left from an earlier holding
        position = await self._cancel_working(conn, position, PROTECTIVE, only)
        await self.protect(conn, position)

    async def after_settled(self, conn: Conn, order: Order, outcome: Outcome) -> Position:
        """Follow-ups once an order settled: protect a new position, replace protection
        after a scale, drop protection that is no longer needed (nothing left resting after
        a close)."""
        position = outcome.position
        if outcome.order_status not in FINAL_ORDER:
            return position
        self.ctx.crash_point(f"{order.purpose}.settled")
        if position.status in FINAL_POSITION:
            return await self.cancel_protection(conn, position)
        if outcome.position_status == "open" and order.purpose == "entry":
            return await self.protect(conn, position)
        if order.purpose in ("scale_in", "scale_out") and position.status != "closing":
            position = await self.cancel_protection(conn, position)
            return await self.protect(conn, position)
        return position

    async def cancel_protection(self, conn: Conn, position: Position) -> Position:
        """Cancel resting stop-loss / take-profit orders; record one that filled meanwhile."""
        return await self._cancel_working(conn, position, PROTECTIVE)

    async def cancel_entry(self, conn: Conn, position: Position) -> Position:
        """Cancel an entry still working (a resting limit order); what it filled is kept, so
        the position opens with that (or fails when nothing filled)."""
        return await self._cancel_working(conn, position, ("entry",))

    async def _cancel_working(
        self,
        conn: Conn,
        position: Position,
        purposes: tuple[str, ...],
        only: set[uuid.UUID] | None = None,
    ) -> Position:
        """Cancel the position's orders of ``purposes`` that are not final (of ``only``, when
        given), one at a time and re-read each time (recording one can settle another: a
        filled stop cancels its sibling)."""
        tried: set[uuid.UUID] = set()
        while True:
            rows = await load_orders(conn, position.id)
            order = next(
                (
                    o
                    for o in rows
                    if o.purpose in purposes
                    and o.status not in FINAL_ORDER
                    and o.id not in tried
                    and (only is None or o.id in only)
                ),
                None,
            )
            if order is None:
                return position
            tried.add(order.id)
            exchange = await self.ctx.router.for_position(position)
            position = await self._cancel_one(conn, exchange, position, order)

    async def _cancel_one(
        self, conn: Conn, exchange: Exchange, position: Position, order: Order
    ) -> Position:
        """Cancel one order and record what the exchange says of it. A cancel answered
        "unknown order" may have raced a fill: the order is looked up and what the exchange
        says is recorded, never the cancel assumed."""
        with urgent(Priority.EXIT):
            return await self._cancel_and_record(conn, exchange, position, order)

    async def _cancel_and_record(
        self, conn: Conn, exchange: Exchange, position: Position, order: Order
    ) -> Position:
        try:
            state = await exchange.cancel_order(order.symbol, order.client_order_id)
        except UnknownOrder:
            found = await exchange.get_order(order.symbol, order.client_order_id)
            if found is None:
                return await self._cancel_unsent(conn, position, order)
            state = found
        return await self.driver.record(conn, exchange, position, order, state)

    async def _cancel_unsent(self, conn: Conn, position: Position, order: Order) -> Position:
        """An order the exchange does not know: cancelled here, unless it is an entry that
        was sent and may still arrive."""
        if order.purpose == "entry" and order.send_attempts > 0:
            raise LookLater(f"entry {order.client_order_id} may still arrive: cancel it later")
        async with conn.transaction():  # never reached the exchange: cancelled here
            await set_order_status(conn, order, "cancelled")
            if order.purpose == "entry" and position.status == "submitting":
                reason = "entry cancelled before it was sent"
                position = await set_position_status(conn, position, "failed", reason=reason)
        return position
