"""Periodic passes of the engine: reconcile orders in flight, enforce paper protection.

* At start-up and every ``execution.reconcile_interval`` seconds, every order not in a final
  state is brought up to date with the exchange (fills caught up, orders that never arrived
  re-sent with the same client id), and positions left waiting without an order in flight
  are picked up again. A stop that fired on Binance while the worker was down is recorded
  here, and the position closed. An order the exchange reports nothing new about is left
  as it is: a pass writes only what changed. Binance positions held without the stop-loss /
  take-profit orders they ask for (an exit that failed, an order cancelled or expired on
  the exchange, a crash before it was placed) get them placed again.
* Paper positions with a stop-loss, take-profit or max loss: the simulated exchange watches
  its price feed; when the price crosses, an exit is requested (``request_position_exit``,
  reason ``stop_loss`` / ``take_profit`` / ``max_loss``) and handled like any exit.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anyio
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from worker.db.outbox import translated_errors
from worker.db.queries import q
from worker.errors import DatabaseUnavailable
from worker.exchanges.base import Exchange, ExchangeError
from worker.execution.engine import Engine, PositionBusy
from worker.execution.rules import effective_stop, protection_trigger
from worker.settings import ExecutionSettings


class Watcher:
    def __init__(
        self,
        engine: Engine,
        pool: AsyncConnectionPool[Any],
        paper: Exchange | None,
        cfg: ExecutionSettings,
        log: Any,
    ) -> None:
        self.engine, self.pool, self.paper, self.cfg, self.log = engine, pool, paper, cfg, log
        self.passes = 0

    async def run(self) -> None:
        while True:
            try:
                await self.reconcile_once()
                await self.paper_protection_once()
            except DatabaseUnavailable as exc:
                self.log.warning("reconcile_skipped", error=str(exc))
            self.passes += 1
            await anyio.sleep(self.cfg.reconcile_interval)

    async def _ids(self, name: str, **params: Any) -> list[str]:
        async with translated_errors(), self.pool.connection() as conn:
            cur = await conn.execute(q(name), params)
            return [
                str(r[-1] if name == "exec_orders_to_reconcile" else r[0])
                for r in await cur.fetchall()
            ]

    async def reconcile_once(self) -> None:
        grace = self.cfg.reconcile_grace_seconds
        for position_id in dict.fromkeys(await self._ids("exec_orders_to_reconcile", grace=grace)):
            await self._guarded(self._drive, position_id)
        for position_id in await self._ids("exec_stuck_positions", grace=grace):
            await self._guarded(self.engine.enter, position_id)
        for position_id, request_id in await self._pairs("exec_pending_requests", grace=grace):
            await self._guarded(self.engine.handle_request, position_id, request_id)
        if self.engine.router.live is not None:  # exchange-side protection: Binance only
            for position_id in await self._ids("exec_unprotected_positions", grace=grace):
                await self._guarded(self.engine.restore_protection, position_id)

    async def _pairs(self, name: str, **params: Any) -> list[tuple[str, str]]:
        async with translated_errors(), self.pool.connection() as conn:
            cur = await conn.execute(q(name), params)
            return [(str(r[0]), str(r[1])) for r in await cur.fetchall()]

    async def _drive(self, position_id: str) -> None:
        async with self.engine.locked(position_id) as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(q("exec_position"), {"position_id": position_id})
            position = await cur.fetchone()
            if position is not None:
                await self.engine.drive_open_orders(conn, position)

    async def _guarded(self, action: Any, position_id: str, *args: Any) -> None:
        """One position's trouble is logged and skipped; it never stops the watcher."""
        try:
            async with translated_errors():
                await action(position_id, *args)
        except PositionBusy:
            return  # somebody is on it right now; the next pass looks again
        except DatabaseUnavailable:
            raise
        except ExchangeError as exc:
            self.log.warning("reconcile_exchange_error", position_id=position_id, error=str(exc))
        except Exception as exc:
            self.log.error(
                "reconcile_failed", position_id=position_id, error=f"{type(exc).__name__}: {exc}"
            )

    async def paper_protection_once(self) -> None:
        if self.paper is None:
            return
        async with translated_errors(), self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(q("exec_paper_watch"))
            rows = await cur.fetchall()
        for row in rows:
            try:
                reason = await self._paper_trigger(row)
            except Exception as exc:  # one bad row must not stop the others
                self.log.error(
                    "protection_check_failed",
                    position_id=str(row["id"]),
                    error=f"{type(exc).__name__}: {exc}",
                )
                continue
            if reason is not None:
                await self._request_exit(str(row["id"]), reason)

    async def _paper_trigger(self, row: dict[str, Any]) -> str | None:
        assert self.paper is not None
        price = await self.paper.price(row["symbol"])
        held = row["held_quantity"] or Decimal(0)
        avg = (row["entry_value"] / row["entry_quantity"]) if row["entry_quantity"] else price
        stop = effective_stop(row["side"], row["stop_loss_price"], row["max_loss_usdt"], avg, held)
        reason = protection_trigger(row["side"], price, stop, row["take_profit_price"])
        if reason == "stop_loss" and stop != row["stop_loss_price"]:
            reason = "max_loss"
        return reason

    async def _request_exit(self, position_id: str, reason: str) -> None:
        try:
            async with translated_errors(), self.pool.connection() as conn:
                await conn.execute(
                    q("exec_request_exit"), {"position_id": position_id, "reason": reason}
                )
            self.log.info("protection_triggered", position_id=position_id, reason=reason)
        except psycopg.Error as exc:  # moved on meanwhile, or an exit is already pending
            self.log.info("protection_not_requested", position_id=position_id, error=str(exc))
