"""Periodic passes of the engine: reconcile orders in flight, enforce paper protection.

* At start-up and every ``execution.reconcile_interval`` seconds, the orders not in a final
  state are brought up to date with the exchange (fills caught up, orders that never arrived
  re-sent with the same client id), and positions left waiting without an order in flight
  are picked up again (on the passes that list, below: the check probes every waiting
  position's orders, so it runs once per listing, not every pass). The REST safety net:
  every ``execution.open_orders_interval`` seconds, each account's open orders are listed
  (on Binance ``GET /api/v3/openOrders``, one call per symbol or one for all:
  ``reconcile_plan``; the paper book, every user's paper orders, as one account); only an
  order that left that list, or that it shows changed, is looked up on its own. Between
  listings a pass drives, and reads from the database, only the orders still to be sent and
  the paper orders that this process's paper matching moved (every pass first matches the
  paper book against the feed, ``PaperExchange.poll``, which claims only the orders the
  price moves): the orders resting at an exchange are read once per listing, with the list
  they are compared with (``reconcile_plan.next_full_read``), so a pass costs what changed,
  not what rests. A Binance fill between listings comes over the user data stream; a paper
  order another process's matching moved is that process's to drive, and the listing is the
  net under both. A pass that reads the orders in flight reads them all (no limit), and the
  positions to drive go in turns across users (``worker.pipeline.turns``): one user's
  thousand resting orders cannot hold up another user's fill. A stop that fired on Binance
  while the worker was down is recorded here, and the position closed. An order the exchange
  reports nothing new about is left as it is: a pass writes only what changed. Binance
  positions held without the stop-loss / take-profit orders they ask for (an exit that
  failed, an order cancelled or expired on the exchange, a crash before it was placed) get
  them placed again.
* Paper positions with a stop-loss, take-profit or max loss: the simulated exchange watches
  its price feed; when the price crosses, an exit is requested (``request_position_exit``,
  reason ``stop_loss`` / ``take_profit`` / ``max_loss``) and handled like any exit.
* Live positions protected from the worker's side (``positions.protection = 'worker'``:
  the exchange had no room for their stop-loss / take-profit orders, or refused them) are
  watched the same way, on their exchange's last price (one lookup per exchange and
  symbol per pass); the exit is a market order. Their orders are tried again on every
  pass with the positions missing protection (``exec_unprotected_positions``).

One position's failure is logged with its traceback and skipped; it never stops the pass.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any, Final

import anyio
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from worker.db.queries import q
from worker.driver_errors import translated_errors
from worker.errors import Conflict, DatabaseUnavailable
from worker.exchanges.base import Exchange, ExchangeError, ListsOpenOrders, OrderState
from worker.exchanges.budget import Priority, urgent
from worker.exchanges.paper import PaperExchange
from worker.execution.context import PositionBusy
from worker.execution.engine import Engine
from worker.execution.protection_plan import effective_stop, protection_trigger
from worker.execution.reconcile_plan import (
    InFlight,
    due,
    needs_lookup,
    next_full_read,
    open_orders_calls,
)
from worker.execution.rows import Position, fetch_all
from worker.metrics import Metrics
from worker.pipeline.turns import in_turns
from worker.settings import ExecutionSettings

STUCK_NAMED: Final = 20  # positions named in a waiting_positions_picked_up line
AccountKey = tuple[bool, uuid.UUID | None]  # (paper, exchange account: None the operator's)


class Watcher:
    def __init__(
        self,
        engine: Engine,
        pool: AsyncConnectionPool[Any],
        paper: Exchange | None,
        cfg: ExecutionSettings,
        log: Any,
        metrics: Metrics | None = None,
    ) -> None:
        self.engine, self.pool, self.paper, self.cfg, self.log = engine, pool, paper, cfg, log
        self.metrics = metrics
        self.passes = 0
        self.orders_read = 0  # orders in flight read from the database, every pass's
        self.waiting_checks = 0  # checks for positions waiting with no order in flight
        self._listed_at: dict[AccountKey, float] = {}  # last listing of its open orders
        self._full_read_at = 0.0  # a pass from this time on reads every order in flight

    async def run(self) -> None:
        while True:
            try:
                started = time.perf_counter()
                await self.reconcile_once()
                if self.metrics is not None:
                    self.metrics.reconcile_pass.observe(time.perf_counter() - started)
                await self.paper_protection_once()
                await self.worker_protection_once()
            except (DatabaseUnavailable, Conflict) as exc:  # the next pass tries again
                self.log.warning("reconcile_skipped", error=str(exc))
            self.passes += 1
            await anyio.sleep(self.cfg.reconcile_interval)

    async def reconcile_once(self) -> None:
        grace = self.cfg.reconcile_grace_seconds
        moved = await self._paper_moved()
        now = time.monotonic()
        read_all = now >= self._full_read_at
        flights = await self._in_flight(grace, read_all, moved)
        self.orders_read += len(flights)
        if self.metrics is not None:
            self.metrics.reconcile_orders_read.inc(len(flights))
        views: dict[AccountKey, Mapping[str, OrderState] | None] = {}
        if read_all:
            views = await self._open_order_views(flights, now)
            due_at = (self._listing_due(key, views, now) for key in {key for key, _ in flights})
            self._full_read_at = next_full_read(now, due_at, self.cfg.open_orders_interval)
        to_drive = [
            order
            for key, order in flights
            if key not in views or needs_lookup(order, views[key]) or order.client_order_id in moved
        ]
        for run in in_turns(to_drive):  # a batch's turns: every user's first, then second ...
            await self._guarded(self.engine.reconcile, run.position_id)
        if read_all:  # a probe per waiting position: with the listing, not every pass
            self.waiting_checks += 1
            await self._enter_stuck(await self._ids("exec_stuck_positions", grace))
        for position_id, request_id in await self._rows("exec_pending_requests", grace):
            await self._guarded(self.engine.handle_request, position_id, request_id)
        if self.engine.router.trades_live:  # exchange-side protection: Binance only
            for position_id in await self._ids("exec_unprotected_positions", grace):
                await self._guarded(self.engine.restore_protection, position_id)

    async def _paper_moved(self) -> set[str]:
        """The paper book matched against the feed (the orders resting on every symbol that
        has any), and the client order ids of the paper orders this process's matches
        changed since the last pass (these, the placements' and the lookups')."""
        if not isinstance(self.paper, PaperExchange):
            return set()
        await self.paper.poll()  # a symbol it cannot price is left for the next pass
        return set(self.paper.take_moved())

    async def _in_flight(
        self, grace: float, every: bool, moved: set[str]
    ) -> list[tuple[AccountKey, InFlight]]:
        """The worker's orders not final (``every``), or only those still to be sent and
        the paper orders ``moved``, each with the account it trades on."""
        query = "exec_orders_in_flight" if every else "exec_orders_to_send"
        async with translated_errors(), self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(q(query), {"grace": grace, "moved": list(moved)})
            rows = await cur.fetchall()
        flights = []
        for row in rows:
            key = (bool(row.pop("is_paper_trade")), row.pop("account_id"))
            flights.append((key, InFlight(**row)))
        return flights

    async def _open_order_views(
        self, flights: list[tuple[AccountKey, InFlight]], now: float
    ) -> dict[AccountKey, Mapping[str, OrderState] | None]:
        """Each account's open orders by client order id, when listed this pass (None: not
        due, or the listing failed). An account that cannot list them is absent: its orders
        are looked up one by one. The paper book (every user's paper orders) is one
        account."""
        views: dict[AccountKey, Mapping[str, OrderState] | None] = {}
        symbols_of: dict[AccountKey, set[str]] = {}
        for key, order in flights:
            symbols_of.setdefault(key, set()).add(order.symbol)
        for key, symbols in symbols_of.items():
            exchange = await self._lister(key)
            if exchange is None:
                continue
            views[key] = None
            if not due(self._listed_at.get(key), now, self.cfg.open_orders_interval):
                continue
            try:
                states = [
                    state
                    for symbol in open_orders_calls(symbols)
                    for state in await exchange.open_orders(symbol)
                ]
            except ExchangeError as exc:
                self.log.warning("open_orders_unlisted", account=str(key[1]), error=str(exc))
                continue
            self._listed_at[key] = now
            views[key] = {state.client_order_id: state for state in states}
        return views

    def _listing_due(
        self, key: AccountKey, views: Mapping[AccountKey, object], now: float
    ) -> float:
        """When ``key``'s open orders are next listed: now for an account that cannot list
        (looked up order by order every pass) or never listed (its listing failed)."""
        listed = self._listed_at.get(key)
        if key not in views or listed is None:
            return now
        return listed + self.cfg.open_orders_interval

    async def _lister(self, key: AccountKey) -> ListsOpenOrders | None:
        paper, account_id = key
        if paper:  # the shared paper book: every user's paper orders
            return self.paper if isinstance(self.paper, PaperExchange) else None
        try:
            exchange = await self.engine.router.for_account(account_id)
        except Exception:  # not configured, account unusable: the engine says why
            return None
        return exchange if isinstance(exchange, ListsOpenOrders) else None

    async def _rows(self, name: str, grace: float) -> list[tuple[str, ...]]:
        """The named query's rows, every column as a string."""
        async with translated_errors(), self.pool.connection() as conn:
            cur = await conn.execute(q(name), {"grace": grace})
            return [tuple(str(value) for value in row) for row in await cur.fetchall()]

    async def _ids(self, name: str, grace: float) -> list[str]:
        return [row[0] for row in await self._rows(name, grace)]

    async def _guarded(
        self, action: Callable[..., Awaitable[None]], position_id: str, *args: str
    ) -> None:
        """One position's trouble is logged and skipped; it never stops the watcher."""
        try:
            async with translated_errors():
                await action(position_id, *args)
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            self._trouble(position_id, exc)

    async def _enter_stuck(self, position_ids: list[str]) -> None:
        """Positions created and never entered (a crash before their entry order was
        recorded, an entry event dead after its retries), entered together
        (``Engine.enter_many``) with a warning that names them: the safety net caught what
        the events did not; one's trouble is logged, as :meth:`_guarded` logs it, and
        skipped."""
        if position_ids:
            self.log.warning(
                "waiting_positions_picked_up",
                count=len(position_ids),
                position_ids=position_ids[:STUCK_NAMED],
            )
        if len(position_ids) < 2:
            for position_id in position_ids:
                await self._guarded(self.engine.enter, position_id)
            return
        try:
            async with translated_errors():
                results = await self.engine.enter_many(position_ids)
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            self._trouble(f"{len(position_ids)} positions", exc)
            return
        for position_id, result in results.items():
            if result is not None:
                self._trouble(position_id, result)

    def _trouble(self, position_id: str, exc: Exception) -> None:
        """Log what one position's pass met (somebody else on it: nothing to say)."""
        if isinstance(exc, PositionBusy):
            return  # somebody is on it right now; the next pass looks again
        if isinstance(exc, ExchangeError):  # the exchange's trouble, not the engine's: one line
            self.log.warning("reconcile_exchange_error", position_id=position_id, error=str(exc))
            return
        if isinstance(exc, Conflict):  # rolled back for a concurrent transaction: next pass
            self.log.warning("reconcile_conflict", position_id=position_id, error=str(exc))
            return
        self.log.error(
            "reconcile_failed",
            position_id=position_id,
            error=f"{type(exc).__name__}: {exc}",
            exc_info=exc,
        )

    async def paper_protection_once(self) -> None:
        if self.paper is None:
            return
        paper = self.paper
        await self._watch("exec_paper_watch", lambda position: paper.price(position.symbol))

    async def worker_protection_once(self) -> None:
        """Live positions protected from the worker's side: each exchange's price of a
        symbol looked up once per pass."""
        prices: dict[tuple[int, str], Decimal] = {}

        async def price(position: Position) -> Decimal:
            exchange = await self.engine.router.for_position(position)
            key = (id(exchange), position.symbol)
            if key not in prices:
                with urgent(Priority.EXIT):  # the price that decides a worker-side exit
                    prices[key] = await exchange.price(position.symbol)
            return prices[key]

        await self._watch("exec_worker_watch", price)

    async def _watch(self, query: str, price_of: Callable[[Position], Awaitable[Decimal]]) -> None:
        """Request the exit of each position of ``query`` whose price crossed a level."""
        async with translated_errors(), self.pool.connection() as conn:
            positions = await fetch_all(conn, Position, query)
        for position in positions:
            try:
                reason = trigger_of(position, await price_of(position))
            except Exception as exc:  # one bad row must not stop the others
                self.log.error(
                    "protection_check_failed",
                    position_id=str(position.id),
                    error=f"{type(exc).__name__}: {exc}",
                    exc_info=True,
                )
                continue
            if reason is not None:
                await self._request_exit(str(position.id), reason)

    async def _request_exit(self, position_id: str, reason: str) -> None:
        try:
            async with translated_errors(), self.pool.connection() as conn:
                await conn.execute(
                    q("exec_request_exit"), {"position_id": position_id, "reason": reason}
                )
            self.log.info("protection_triggered", position_id=position_id, reason=reason)
        except psycopg.Error as exc:  # moved on meanwhile, or an exit is already pending
            self.log.info("protection_not_requested", position_id=position_id, error=str(exc))


def trigger_of(position: Position, price: Decimal) -> str | None:
    """The exit reason ``price`` gives a protected position (``stop_loss``,
    ``take_profit``, ``max_loss``), or None."""
    held = position.held_quantity or Decimal(0)
    entered, value = position.entry_quantity, position.entry_value
    avg = value / entered if entered and value is not None else price
    stop = effective_stop(
        position.side, position.stop_loss_price, position.max_loss_usdt, avg, held
    )
    reason = protection_trigger(position.side, price, stop, position.take_profit_price)
    if reason == "stop_loss" and stop != position.stop_loss_price:
        reason = "max_loss"
    return reason
