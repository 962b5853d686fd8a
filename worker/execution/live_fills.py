"""Fills pushed by the exchange, recorded as they arrive: one user data stream per live account.

* :class:`UserStreams` runs in the app's task group. :meth:`UserStreams.open` follows an
  account (the operator's, key None, or a user's account id) with the account's REST client;
  :meth:`UserStreams.close` stops it. The account registry calls both: a stream lives as
  long as its account's client.
* An ``executionReport`` of one of the worker's orders on that account (a ``pw-`` client id,
  looked up on that account's positions only) is recorded at once by
  :meth:`Engine.record_pushed`, through the recording a lookup's answer goes through
  (trades deduplicated by trade id): a fill seen by the stream and by the reconcile pass
  is recorded once. NEW reports are skipped: a placement's own answer records acceptance.
* Updates are recorded side by side across positions, one at a time per position, in the
  order they came. A position busy elsewhere (its lock held: the order being placed, a
  reconcile pass), or a recording that failed (rolled back), is tried again shortly, a few
  times; the reconcile pass is the safety net.
* On every (re)connection, before any pushed update is handled, a catch-up over REST: for
  each symbol with orders in flight, ``openOrders``; every order of ours that left the open
  list or executed more than its row says is reconciled (``get_order``, then ``myTrades``
  from its last recorded trade id: ``recording.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from functools import partial
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup, TaskStatus
from psycopg_pool import AsyncConnectionPool

from worker.db.queries import q
from worker.driver_errors import translated_errors
from worker.errors import Conflict, DatabaseUnavailable
from worker.exchanges.base import ExchangeError
from worker.exchanges.binance import BinanceClient
from worker.exchanges.user_stream import OrderUpdate, UserStream
from worker.execution.context import PositionBusy
from worker.execution.engine import Engine
from worker.settings import BinanceSettings

BUSY_RETRIES: Final = 6  # a busy position is tried again this many times ...
BUSY_FIRST_S: Final = 0.05  # ... after 50 ms, doubling (about 3 s in all)
WORKER_IDS: Final = "pw-"  # execution/client_ids.py: every client id the worker gives


class UserStreams:
    """The user data streams of the live accounts this worker trades."""

    def __init__(
        self,
        engine: Engine,
        pool: AsyncConnectionPool[Any],
        settings: BinanceSettings,
        log: Any,
    ) -> None:
        self.engine, self.pool, self.settings, self.log = engine, pool, settings, log
        self._tg: TaskGroup | None = None
        self._scopes: dict[uuid.UUID | None, anyio.CancelScope] = {}
        self.streams: dict[uuid.UUID | None, UserStream] = {}
        self._turns: dict[str, anyio.Lock] = {}  # position id -> its updates, one at a time
        self.recorded = 0  # updates recorded (tests and the bench read it)
        self.caught_up = 0  # catch-ups done

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the streams' tasks until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = None

    def open(self, account_id: uuid.UUID | None, client: BinanceClient) -> None:
        """Follow the account's stream (nothing when its client has no WebSocket API URL,
        when streams are off, or when it is followed already)."""
        if self._tg is None or client.ws_api_url is None or not self.settings.user_stream:
            return
        if account_id in self._scopes:
            return
        scope = anyio.CancelScope()
        self._scopes[account_id] = scope
        self._tg.start_soon(self._follow, account_id, client, scope)

    def close(self, account_id: uuid.UUID | None) -> None:
        scope = self._scopes.pop(account_id, None)
        if scope is not None:
            scope.cancel()

    async def _follow(
        self, account_id: uuid.UUID | None, client: BinanceClient, scope: anyio.CancelScope
    ) -> None:
        assert client.ws_api_url is not None
        log = self.log.bind(account_id=str(account_id) if account_id else "operator")
        stream = UserStream(
            client.ws_api_url,
            client.credentials,
            timestamp=client.timestamp_ms,
            resync=client.sync_time,
            log=log,
            recv_window_ms=self.settings.recv_window_ms,
            reconnect_max_s=self.settings.stream_reconnect_max_seconds,
            open_timeout_s=self.settings.timeout_seconds,
        )
        self.streams[account_id] = stream
        try:
            with scope:
                await stream.run(
                    partial(self._record, account_id, log),
                    partial(self._catch_up, account_id, client, log),
                )
        finally:
            if self.streams.get(account_id) is stream:
                del self.streams[account_id]
            if self._scopes.get(account_id) is scope:
                del self._scopes[account_id]

    # -- pushed updates --------------------------------------------------------------------------

    async def _record(self, account_id: uuid.UUID | None, log: Any, update: OrderUpdate) -> None:
        """Hand the update of one of our orders to its position's turn: positions are
        recorded side by side, each one's updates in the order they came."""
        if update.execution == "NEW" or not update.client_order_id.startswith(WORKER_IDS):
            return
        found = await self._guarded(log, self._order_of, account_id, update.client_order_id)
        if found is None or self._tg is None:
            return  # not one of ours on this account (or the database is away: polled later)
        position_id, order_id = found
        record = partial(self.engine.record_pushed, position_id, order_id, update.state)
        turn = self._turns.setdefault(position_id, anyio.Lock())
        self._tg.start_soon(self._record_in_turn, position_id, turn, log, record)

    async def _record_in_turn(
        self, position_id: str, turn: anyio.Lock, log: Any, record: Callable[[], Awaitable[None]]
    ) -> None:
        """Record under the position's turn. A position busy elsewhere, or moved under the
        recording (a transaction rolled back), is tried again shortly, a few times, then
        left to the reconcile pass."""
        async with turn:
            for attempt in range(BUSY_RETRIES + 1):
                if attempt:
                    await anyio.sleep(BUSY_FIRST_S * 2 ** (attempt - 1))
                if await self._attempt(log, record, final=attempt == BUSY_RETRIES):
                    self.recorded += 1
                    break
            else:
                log.info("user_stream_update_deferred", detail="left to the reconcile pass")
        if not turn.locked() and turn.statistics().tasks_waiting == 0:
            self._turns.pop(position_id, None)

    async def _attempt(
        self, log: Any, record: Callable[[], Awaitable[None]], *, final: bool
    ) -> bool:
        """One try; False to try again. Failures are logged as errors on the last try."""
        try:
            async with translated_errors():
                await record()
        except PositionBusy:
            return False
        except (DatabaseUnavailable, Conflict, ExchangeError) as exc:
            log.warning("user_stream_update_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        except Exception as exc:  # e.g. the position moved under the recording: again
            level = log.error if final else log.warning
            level("user_stream_update_failed", error=f"{type(exc).__name__}: {exc}", exc_info=final)
            return False
        return True

    async def _order_of(
        self, account_id: uuid.UUID | None, client_order_id: str
    ) -> tuple[str, uuid.UUID] | None:
        async with self.pool.connection() as conn:
            params = {"client_order_id": client_order_id, "account_id": account_id}
            cur = await conn.execute(q("stream_order_of_account"), params)
            row = await cur.fetchone()
        return None if row is None else (str(row[0]), row[1])

    async def _guarded(self, log: Any, action: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``action``; trouble is logged, never ends the stream (None then)."""
        try:
            async with translated_errors():
                return await action(*args)
        except PositionBusy:
            return None  # its holder drives the order, and records what this update says
        except (DatabaseUnavailable, Conflict, ExchangeError) as exc:
            log.warning("user_stream_update_failed", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            log.error(
                "user_stream_update_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True
            )
        return None

    # -- catching up -----------------------------------------------------------------------------

    async def _catch_up(
        self, account_id: uuid.UUID | None, client: BinanceClient, log: Any
    ) -> None:
        """Before the stream is trusted: what happened while it was down, over REST."""
        async with translated_errors(), self.pool.connection() as conn:
            cur = await conn.execute(q("stream_orders_in_flight"), {"account_id": account_id})
            rows = await cur.fetchall()
        behind: dict[str, None] = {}
        for symbol in sorted({row[2] for row in rows}):
            working = {s.client_order_id: s for s in await client.open_orders(symbol)}
            for position_id, client_order_id, order_symbol, filled in rows:
                state = working.get(client_order_id)
                if order_symbol == symbol and (
                    state is None or state.executed_qty != (filled or Decimal(0))
                ):
                    behind[str(position_id)] = None
        for position_id in behind:
            await self._guarded(log, self.engine.reconcile, position_id)
        self.caught_up += 1
        log.info("user_stream_caught_up", orders=len(rows), reconciled=len(behind))
