"""Many new positions entered at once: the ``created`` positions of one claimed batch.

What :meth:`Entry.start` and :meth:`Driver.drive` do for one position, done for many with a
statement per step instead of a statement per position per step (a signal fanned out to a
thousand followers is a thousand entries committed at once):

1. each position checked (``Entry.check``: its exchange, symbol, filters, stop-loss and
   take-profit; each symbol's price read once for the batch);
2. **one transaction**: the users' risk locks, taken in one order; their limits and
   exposure read for every user at once, then each position judged in turn, where a
   position refused earlier in the batch no longer counts (as when committed one by one);
   the entry orders of those accepted inserted and their positions moved to
   ``submitting``; the refused failed with their reason;
3. the orders sent (paper orders placed together, live ones side by side), their answers
   recorded in one transaction, then each position's follow-ups (``batch_sends.py``).

The crash-safety rules are the one-position path's: the intent is committed before the
send, the outcome recorded after it, and the crash points have the same names (each hit
once per batch), so a crash anywhere leaves every position where recovery expects it. What
the batch does not cover goes through the one-position code on the same connection: a
position not in ``created`` any more, an exchange error on a send (a rejection, a refused
key, an outcome unknown). A failure of one position's step is that position's result; a
failure of a shared step is every position's of that step, and their events are retried.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from psycopg.rows import dict_row

from worker.db.queries import q
from worker.execution.batch_sends import BatchSends, Results, Started, caught, log_foreign, ms
from worker.execution.client_ids import client_order_id
from worker.execution.context import Context
from worker.execution.entry import Checked, Entry, exposure_rows
from worker.execution.orders import Driver
from worker.execution.protection import Protection
from worker.execution.rows import Conn, Order, Position, fetch_all
from worker.execution.transitions import set_position_status
from worker.risk import RiskLimits

DriveOne = Callable[[Conn, Position], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class _Judged:
    position: Position
    problem: str | None
    checked: Checked | None


class EntryBatch:
    def __init__(
        self,
        ctx: Context,
        entry: Entry,
        driver: Driver,
        protection: Protection,
        sends: BatchSends,
    ) -> None:
        self.ctx, self.entry, self.driver, self.protection = ctx, entry, driver, protection
        self.sends = sends

    async def run(self, conn: Conn, positions: Sequence[Position], drive_one: DriveOne) -> Results:
        """Enter ``positions`` (their locks held on ``conn``); each one's result: None, or
        what failed it. Those not in ``created`` are driven one by one (``drive_one``)."""
        results: Results = {}
        await self._log_foreign(conn, positions)
        created = [p for p in positions if p.status == "created"]
        started = await self._start(conn, created, results) if created else []
        if started:
            await self.sends.send_and_record(conn, started, results, "entry_batch_recorded")
        for position in positions:
            if position.status != "created":
                results[position.id] = await caught(drive_one(conn, position))
        for item in started:  # what the one-position path ends with (paper: nothing)
            if results.get(item.position.id) is None and not item.position.is_paper_trade:
                done = await caught(self.protection.protect(conn, item.position))
                results[item.position.id] = done
        return results

    # -- 1 and 2: checks, then the intents in one transaction ----------------------------------

    async def _start(
        self, conn: Conn, positions: list[Position], results: Results
    ) -> list[Started]:
        prices: dict[str, Decimal] = {}
        judged: list[_Judged] = []
        began = time.monotonic()
        for position in positions:
            try:
                problem, checked = await self.entry.check(position, prices)
            except Exception as exc:  # its exchange unavailable, ...: its event is retried
                results[position.id] = exc
                continue
            judged.append(_Judged(position, problem, checked))
        if not judged:
            return []
        checks_done = time.monotonic()
        try:
            async with conn.transaction():
                judged = await self._judge(conn, judged, prices)
                started = await self._record_intents(conn, judged)
        except Exception as exc:
            for item in judged:
                results[item.position.id] = exc
            return []
        self.ctx.log.info(
            "entry_batch",
            positions=len(judged),
            started=len(started),
            check_ms=ms(checks_done - began),
            intents_ms=ms(time.monotonic() - checks_done),
        )
        for item in judged:
            if item.problem is not None:
                results[item.position.id] = None
                self.ctx.log.warning(
                    "entry_refused", position_id=str(item.position.id), reason=item.problem
                )
        return started

    async def _judge(
        self, conn: Conn, judged: list[_Judged], prices: dict[str, Decimal]
    ) -> list[_Judged]:
        """Each position's risk limits, in the batch's order (``Entry.judge``), under every
        user's lock until commit."""
        users = sorted({str(j.position.user_id) for j in judged if j.checked is not None})
        if not users:
            return judged
        await conn.execute(q("risk_lock_users"), {"user_ids": users})
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(q("risk_overrides"), {"user_ids": users})
            overrides = {str(row["user_id"]): row for row in await cur.fetchall()}
            limits = {u: RiskLimits.of(self.ctx.risk, overrides.get(u)) for u in users}
            exposure: dict[tuple[str, bool], list[dict[str, Any]]] = {}
            counted = [u for u in users if exposure_rows(limits[u])]  # a limit needs them
            if counted:
                bound = max(exposure_rows(limits[u]) for u in counted) + 1
                await cur.execute(q("risk_exposures"), {"user_ids": counted, "limit": bound})
                for row in await cur.fetchall():
                    exposure.setdefault((str(row["user_id"]), row["live"]), []).append(row)
        refused: set[uuid.UUID] = set()
        out: list[_Judged] = []
        for item in judged:
            position, problem, checked = item.position, item.problem, item.checked
            if problem is None and checked is not None:
                user = str(position.user_id)
                rows = exposure.get((user, not position.is_paper_trade), [])
                others = [r for r in rows if r["id"] != position.id and r["id"] not in refused]
                user_limits = limits[user]
                others = others[: exposure_rows(user_limits)]
                problem = await self.entry.judge(position, checked, user_limits, others, prices)
            if problem is not None or checked is None:
                refused.add(position.id)
            out.append(_Judged(position, problem, checked))
        return out

    async def _record_intents(self, conn: Conn, judged: list[_Judged]) -> list[Started]:
        """The accepted positions' entry orders and their move to ``submitting``; the
        refused ones failed. In the caller's transaction."""
        accepted = [(j.position, j.checked) for j in judged if j.problem is None and j.checked]
        started: list[Started] = []
        if accepted:
            orders = await fetch_all(conn, Order, "exec_insert_entry_orders", **_rows(accepted))
            moved = await conn.execute(
                q("exec_positions_submitting"), {"position_ids": [p.id for p, _ in accepted]}
            )
            if moved.rowcount != len(accepted):
                raise RuntimeError("positions of the batch moved under us (created -> submitting)")
            for (position, checked), order in zip(accepted, orders, strict=True):
                position = replace(position, status="submitting")
                started.append(Started(position, order, checked.exchange))
        for item in judged:
            if item.problem is not None or item.checked is None:
                await set_position_status(conn, item.position, "failed", reason=item.problem)
        return started

    async def _log_foreign(self, conn: Conn, positions: Sequence[Position]) -> None:
        await log_foreign(self.ctx, conn, positions)


def _rows(accepted: list[tuple[Position, Checked]]) -> dict[str, list[Any]]:
    """exec_insert_entry_orders' columns, one element per accepted position (the order ids
    drawn here: the client order ids are made from them)."""
    ids = [uuid.uuid4() for _ in accepted]
    return {
        "id": ids,
        "position_id": [p.id for p, _ in accepted],
        "user_id": [p.user_id for p, _ in accepted],
        "client_order_id": [client_order_id(i, "entry") for i in ids],
        "symbol": [p.symbol for p, _ in accepted],
        "side": [p.entry_side for p, _ in accepted],
        "type": ["limit" if p.limit_price else "market" for p, _ in accepted],
        "quantity": [c.quantity for _, c in accepted],
        "quote_quantity": [p.requested_quote for p, _ in accepted],
        "price": [p.limit_price for p, _ in accepted],
        "is_paper_trade": [p.is_paper_trade for p, _ in accepted],
    }
