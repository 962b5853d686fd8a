"""Driving one order: record the intent, send it, look it up, and bring its row up to date
with the exchange; a stop-loss and a take-profit placed together go as one OCO list.

* **Intent before send.** An order row with its client order id (made from the row's uuid,
  drawn here: ``client_ids.client_order_id``) is committed before the order is sent, and
  ``send_attempts`` is bumped (committed) right before each send. An order with
  ``send_attempts > 0`` may exist on the exchange: it is looked up by client order id
  first, and re-sent only after it was missing for ``resend_after`` lookups in a row.
* **Outcome unknown is not failure.** Timeouts, 5xx, -1006/-1007 leave the order as it is;
  the reconciler looks it up later. Only a definitive rejection marks it failed.
* **Lost orders.** An order the exchange acknowledged that answers "Order does not exist."
  (-2013) on every lookup for ``execution.lost_order_seconds`` is lost (``statuses.
  order_lost``: the testnet's reset forgets every order): recorded cancelled with exchange
  status ``LOST`` and an error beginning ``lost:`` (a critical notification), with what
  it filled kept, so its position goes back under management (protection placed again or
  worker-side, an exit or entry settled on what was recorded). Never looked up again.
* **A refused key is not a rejection.** The account's key refused (-1022/-2014/-2015) says
  nothing of the order: exits and protection wait until the key works again. Only an entry
  refused at its first send, which cannot have reached the book, fails with the account's
  reason (and no order is recorded as rejected).
* **Only the worker's own orders** are driven (``client_ids.is_worker_order``).
* **No room is not a rejection.** Protective orders refused for the exchange's caps on
  open orders (MAX_NUM_ALGO_ORDERS, MAX_NUM_ORDER_LISTS) are cancelled as not placed, and
  the refusal is kept in :attr:`Driver.no_room` for the protection to move the position
  to worker-side protection (``protection.py``).

Whatever the exchange answers is recorded (``recording.py``); once an order settles, the
follow-ups (``after_settled``: protection placed or cancelled) run before the next step.
Every method returns the position as it is afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from worker.db.queries import q
from worker.exchanges.base import (
    CredentialsRejected,
    Exchange,
    ExchangeError,
    OcoRequest,
    OrderRejected,
    OrderRequest,
    OrderState,
)
from worker.exchanges.base import Side as OrderSide
from worker.exchanges.budget import Priority, urgent
from worker.execution.client_ids import client_order_id, is_worker_order, oco_list_id
from worker.execution.context import Context, LookLater
from worker.execution.locks import load_orders
from worker.execution.protection_plan import PROTECTIVE, is_cap_rejection, oco_partner
from worker.execution.recording import Outcome, finish_request, record_answer, record_rejection
from worker.execution.rows import Conn, Order, Position, fetch_one
from worker.execution.statuses import LOST, LOST_ERROR, order_lost
from worker.execution.transitions import set_order_status, set_position_status

AfterSettled = Callable[[Conn, Order, Outcome], Awaitable[Position]]


async def new_order(
    conn: Conn,
    position: Position,
    purpose: str,
    side: OrderSide,
    kind: str,
    quantity: Decimal,
    *,
    quote: Decimal | None = None,
    price: Decimal | None = None,
    stop: Decimal | None = None,
    request_id: uuid.UUID | None = None,
) -> Order:
    """Record the intent: a new order row (status ``created``), its id drawn here."""
    order_id = uuid.uuid4()
    order = await fetch_one(
        conn,
        Order,
        "exec_insert_order",
        id=order_id,
        position_id=position.id,
        user_id=position.user_id,
        client_order_id=client_order_id(order_id, purpose),
        symbol=position.symbol,
        side=side,
        type=kind,
        quantity=quantity,
        quote_quantity=quote,
        price=price,
        stop_price=stop,
        purpose=purpose,
        is_paper_trade=position.is_paper_trade,
        request_id=request_id,
    )
    assert order is not None  # INSERT ... RETURNING always returns the row
    return order


class Driver:
    def __init__(self, ctx: Context, after_settled: AfterSettled) -> None:
        self.ctx, self.after_settled = ctx, after_settled
        # position id -> the exchange's refusal of its protective orders for want of room,
        # until the protection takes it up (Protection.protect)
        self.no_room: dict[uuid.UUID, OrderRejected] = {}

    async def drive(self, conn: Conn, position: Position, order: Order) -> Position:
        """Bring one order up to date with the exchange (sending it if it never was).
        A leg of an OCO pair (``oco_partner``) not yet known on the exchange is sent, or
        reconciled, together with its partner (:meth:`_drive_leg`). A row the worker did
        not write is left alone."""
        if not is_worker_order(order.id, order.purpose, order.client_order_id):
            return position
        with urgent(priority_for(order.purpose)):
            return await self._drive(conn, position, order)

    async def _drive(self, conn: Conn, position: Position, order: Order) -> Position:
        if order.status == "created" and order.purpose in PROTECTIVE:
            rows = await load_orders(conn, position.id)
            fresh = next((o for o in rows if o.id == order.id), order)
            if fresh.status != "created":
                return position  # driven a moment ago with its OCO partner
            partner = oco_partner(rows, fresh)
            if partner is not None:
                return await self._drive_leg(conn, position, fresh, partner)
        exchange = await self.ctx.router.for_position(position)
        first_send = False
        try:
            state = await self._current_state(conn, exchange, order)
            if state is None and order.status == "created":
                first_send = order.send_attempts == 0
                state = await self._send(conn, position, order, exchange)
                self.ctx.crash_point(f"{order.purpose}.sent")
        except ExchangeError as exc:
            return await self.send_failed(conn, position, order, exc, first_send=first_send)
        if state is None:
            return position
        return await self.record(conn, exchange, position, order, state)

    async def send_failed(
        self, conn: Conn, position: Position, order: Order, exc: ExchangeError, *, first_send: bool
    ) -> Position:
        """The exchange's error on sending or looking up ``order``: a rejection fails it; a
        refused key fails an entry at its first send (it cannot have reached the book) and
        otherwise waits for the key; anything else (outcome unknown, rate limited) leaves
        the order to be looked at again."""
        if isinstance(exc, OrderRejected):
            return await self._rejected(conn, position, (order,), exc)
        if isinstance(exc, CredentialsRejected) and first_send and order.purpose == "entry":
            return await self._entry_not_sent(conn, position, order, exc)
        self._outcome_unknown(order, exc)
        return position

    async def record(
        self, conn: Conn, exchange: Exchange, position: Position, order: Order, state: OrderState
    ) -> Position:
        """Record what the exchange says of ``order``, then the follow-ups of its outcome."""
        outcome = await record_answer(conn, exchange, position, order, state, self.ctx.crash_point)
        if outcome is None:
            return position
        return await self.after_settled(conn, order, outcome)

    async def _rejected(
        self, conn: Conn, position: Position, orders: tuple[Order, ...], exc: OrderRejected
    ) -> Position:
        """The exchange refused ``orders`` (one, or both legs of an OCO list) outright."""
        if all(o.purpose in PROTECTIVE for o in orders) and is_cap_rejection(exc.code, exc.msg):
            return await self._no_room(conn, position, orders, exc)
        async with conn.transaction():
            for order in orders:
                position = await record_rejection(conn, position, order, exc.code, exc.msg)
                error = str(exc)
                await finish_request(conn, order.request_id, "rejected", error, order_id=order.id)
        extra = {"oco": str(orders[1].id)} if len(orders) > 1 else {}
        self.ctx.log.warning("order_rejected", order_id=str(orders[0].id), error=str(exc), **extra)
        return position

    async def _no_room(
        self, conn: Conn, position: Position, orders: tuple[Order, ...], exc: OrderRejected
    ) -> Position:
        """Protective orders the exchange has no room for: not placed (cancelled, with the
        reason), and the refusal noted for the protection to take up."""
        error = f"not placed: {exc.code} {exc.msg} (no room on the exchange)"
        async with conn.transaction():
            for order in orders:
                await set_order_status(conn, order, "cancelled")
                await conn.execute(
                    q("exec_set_order_error"), {"order_id": order.id, "error": error}
                )
        self.no_room[position.id] = exc
        self.ctx.log.warning("protection_no_room", position_id=str(position.id), error=str(exc))
        return position

    async def _entry_not_sent(
        self, conn: Conn, position: Position, order: Order, exc: CredentialsRejected
    ) -> Position:
        """The account's key was refused at the entry's first send: nothing reached the
        book. The order is failed as not sent (not as rejected), the position failed."""
        reason = f"the exchange refused the account's API key ({exc.code}: {exc.msg})"
        async with conn.transaction():
            await set_order_status(conn, order, "failed")
            await conn.execute(
                q("exec_set_order_error"), {"order_id": order.id, "error": f"not sent: {reason}"}
            )
            position = await set_position_status(
                conn, position, "failed", reason=f"{reason}: fix the exchange account's key"
            )
        self.ctx.log.warning("entry_not_sent", order_id=str(order.id), error=str(exc))
        return position

    def _outcome_unknown(self, order: Order, exc: Exception, **extra: Any) -> None:
        """Outcome unknown or rate limited: the order is looked at again on the next pass."""
        self.ctx.log.warning(
            "order_outcome_unknown",
            order_id=str(order.id),
            client_order_id=order.client_order_id,
            error=str(exc),
            **extra,
        )

    async def _current_state(
        self, conn: Conn, exchange: Exchange, order: Order
    ) -> OrderState | None:
        """The exchange's view of an order that may exist; None when it should be sent now."""
        if order.status == "created" and order.send_attempts == 0:
            return None
        state = await exchange.get_order(order.symbol, order.client_order_id)
        if state is not None:
            return state
        misses, missing_for = await self._missing(conn, order)
        if order.status == "created" and misses >= self.ctx.resend_after:
            return None  # never arrived: safe to send with the same client id
        if order_lost(order.status, missing_for, self.ctx.lost_after_s):
            return await self._lost(conn, order, misses, missing_for)
        raise LookLater(f"order {order.client_order_id} not visible yet ({misses} lookups)")

    async def _missing(self, conn: Conn, order: Order) -> tuple[int, float]:
        """Count one more lookup that did not find ``order``: how many in a row now, and
        for how many seconds."""
        cur = await conn.execute(q("exec_bump_missing"), {"order_id": order.id})
        row = await cur.fetchone()
        return (int(row[0]), float(row[1] or 0)) if row else (0, 0.0)

    async def _lost(self, conn: Conn, order: Order, misses: int, missing_for: float) -> OrderState:
        """What is recorded of a lost order: ended, with what it filled as recorded."""
        error = (
            f"{LOST_ERROR} the exchange acknowledged this order, then answered 'Order does not"
            f" exist.' on {misses} lookups over {missing_for:.0f} s (a testnet reset?)"
        )
        await conn.execute(q("exec_set_order_error"), {"order_id": order.id, "error": error})
        self.ctx.log.error(
            "order_lost",
            order_id=str(order.id),
            position_id=str(order.position_id),
            client_order_id=order.client_order_id,
            purpose=order.purpose,
            missing_for_s=round(missing_for, 1),
        )
        return OrderState(
            client_order_id=order.client_order_id,
            exchange_order_id=order.binance_order_id or "",
            status=LOST,
            executed_qty=order.filled_quantity or Decimal(0),
            cumulative_quote=Decimal(0),
            raw={"status": LOST, "lookups": misses, "missing_for_s": round(missing_for, 1)},
        )

    async def _send(
        self, conn: Conn, position: Position, order: Order, exchange: Exchange
    ) -> OrderState:
        self.ctx.crash_point(f"{order.purpose}.committed")
        await conn.execute(q("exec_bump_send"), {"order_id": order.id})
        return await self.place(position, order, exchange)

    async def place(self, position: Position, order: Order, exchange: Exchange) -> OrderState:
        """Send ``order`` (its ``send_attempts`` already bumped and committed)."""
        return await exchange.place_order(self.sending(position, order))

    def sending(self, position: Position, order: Order) -> OrderRequest:
        """What is sent for ``order``, logged as sent now (``order_sending``)."""
        request = order_request(order)
        self.ctx.log.info(
            "order_sending",
            order_id=str(order.id),
            position_id=str(position.id),
            client_order_id=order.client_order_id,
            purpose=order.purpose,
            side=order.side,
            quantity=str(order.quantity),
        )
        return request

    # -- OCO pairs (a stop-loss and a take-profit placed as one order list) -----------------
    async def _drive_leg(
        self, conn: Conn, position: Position, order: Order, partner: Order
    ) -> Position:
        """A created OCO leg. With its partner also created the pair is sent (or, sent
        before, reconciled) as one list. Otherwise the list reached the exchange (its other
        leg is known there), so this leg exists too: look it up, never send it alone."""
        if partner.status == "created":
            stop, take = (order, partner) if order.purpose == "stop_loss" else (partner, order)
            return await self.drive_pair(conn, position, stop, take)
        exchange = await self.ctx.router.for_position(position)
        try:
            state = await exchange.get_order(order.symbol, order.client_order_id)
            if state is None:
                await self._missing(conn, order)
                raise LookLater(f"OCO leg {order.client_order_id} not visible yet")
        except ExchangeError as exc:
            self._outcome_unknown(order, exc)
            return position
        return await self.record(conn, exchange, position, order, state)

    async def drive_pair(
        self, conn: Conn, position: Position, stop: Order, take: Order
    ) -> Position:
        """Send a stop-loss and a take-profit as one OCO list, or bring a list that may
        exist up to date; a rejection fails both legs."""
        with urgent(Priority.EXIT):
            return await self._drive_pair(conn, position, stop, take)

    async def _drive_pair(
        self, conn: Conn, position: Position, stop: Order, take: Order
    ) -> Position:
        exchange = await self.ctx.router.for_position(position)
        try:
            states = await self._pair_states(conn, exchange, stop, take)
            if states is None:
                states = await self._send_pair(conn, position, stop, take, exchange)
                self.ctx.crash_point("stop_loss.sent")
                self.ctx.crash_point("take_profit.sent")
        except OrderRejected as exc:
            return await self._rejected(conn, position, (stop, take), exc)
        except ExchangeError as exc:  # outcome unknown, rate limited: look again later
            self._outcome_unknown(stop, exc, oco=take.client_order_id)
            return position
        found = {s.client_order_id: s for s in states}
        for leg in (stop, take):
            state = found.get(leg.client_order_id)
            if state is not None:
                position = await self.record(conn, exchange, position, leg, state)
        return position

    async def _pair_states(
        self, conn: Conn, exchange: Exchange, stop: Order, take: Order
    ) -> tuple[OrderState, ...] | None:
        """The exchange's view of a pair that may have been sent; None: send it now. The
        legs are created together, so one leg found means the list exists; it is sent
        again only when neither was found for ``resend_after`` lookups in a row."""
        if stop.send_attempts == 0 and take.send_attempts == 0:
            return None
        states = []
        for leg in (stop, take):
            state = await exchange.get_order(leg.symbol, leg.client_order_id)
            if state is not None:
                states.append(state)
        if states:
            return tuple(states)
        misses = [(await self._missing(conn, leg))[0] for leg in (stop, take)]
        if min(misses) >= self.ctx.resend_after:
            return None  # never arrived: safe to send with the same client ids
        raise LookLater(f"OCO {stop.client_order_id} not visible yet ({min(misses)} lookups)")

    async def _send_pair(
        self, conn: Conn, position: Position, stop: Order, take: Order, exchange: Exchange
    ) -> tuple[OrderState, ...]:
        self.ctx.crash_point("stop_loss.committed")
        async with conn.transaction():
            for leg in (stop, take):
                await conn.execute(q("exec_bump_send"), {"order_id": leg.id})
        request = oco_request(stop, take)
        self.ctx.log.info(
            "oco_sending",
            position_id=str(position.id),
            list_client_order_id=request.list_client_order_id,
            stop_client_order_id=request.stop_client_order_id,
            take_profit_client_order_id=request.take_profit_client_order_id,
            side=stop.side,
            quantity=str(stop.quantity),
        )
        return await exchange.place_oco(request)


def order_request(order: Order) -> OrderRequest:
    """What is sent to the exchange for one order row."""
    return OrderRequest(
        symbol=order.symbol,
        side=order.side,
        type=order.type,
        client_order_id=order.client_order_id,
        quantity=None if order.quote_quantity else order.quantity,
        quote_quantity=order.quote_quantity,
        price=order.price,
        stop_price=order.stop_price,
    )


def oco_request(stop: Order, take: Order) -> OcoRequest:
    """What is sent to the exchange for an OCO pair: its stop-loss and take-profit rows."""
    assert stop.stop_price is not None and take.stop_price is not None  # protective rows
    return OcoRequest(
        symbol=stop.symbol,
        side=stop.side,
        quantity=stop.quantity,
        list_client_order_id=oco_list_id(stop.id),
        stop_client_order_id=stop.client_order_id,
        stop_price=stop.stop_price,
        take_profit_client_order_id=take.client_order_id,
        take_profit_price=take.stop_price,
        take_profit_maker=take.price is not None,  # a limit price: it rests as LIMIT_MAKER
    )


def priority_for(purpose: str) -> Priority:
    """The weight budget's priority of an order's requests: what reduces or protects a
    holding goes first (``budget.py``), then entries."""
    return Priority.ENTRY if purpose in ("entry", "scale_in") else Priority.EXIT
