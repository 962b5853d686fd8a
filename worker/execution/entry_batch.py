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
3. every order's ``send_attempts`` bumped in one statement (committed: from now on it may
   exist on the exchange), then the orders sent: paper orders placed together
   (``PaperExchange.place_orders``: one transaction), live ones ``send_concurrency`` at a
   time;
4. **one transaction** recording every answer (``recording_batch.py``: the same writes as
   the per-order path, a statement per step; one by one if that transaction fails), then
   each position's follow-ups (``after_settled``: protection).

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

import anyio
from psycopg.rows import dict_row

from worker.db.queries import q
from worker.exchanges.base import Exchange, ExchangeError, OrderState
from worker.exchanges.paper import PaperExchange
from worker.execution.client_ids import client_order_id
from worker.execution.context import Context
from worker.execution.entry import Checked, Entry, exposure_rows
from worker.execution.orders import Driver
from worker.execution.protection import Protection
from worker.execution.recording import Answer
from worker.execution.recording_batch import record_fresh_answers
from worker.execution.rows import Conn, Order, Position, fetch_all
from worker.execution.transitions import set_position_status
from worker.risk import RiskLimits

Results = dict[uuid.UUID, Exception | None]
DriveOne = Callable[[Conn, Position], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Started:
    """A position whose entry order is recorded (committed), and where it goes."""

    position: Position
    order: Order
    exchange: Exchange


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
        *,
        send_concurrency: int,
    ) -> None:
        self.ctx, self.entry, self.driver, self.protection = ctx, entry, driver, protection
        self.send_concurrency = max(1, send_concurrency)

    async def run(self, conn: Conn, positions: Sequence[Position], drive_one: DriveOne) -> Results:
        """Enter ``positions`` (their locks held on ``conn``); each one's result: None, or
        what failed it. Those not in ``created`` are driven one by one (``drive_one``)."""
        results: Results = {}
        await self._log_foreign(conn, positions)
        created = [p for p in positions if p.status == "created"]
        started = await self._start(conn, created, results) if created else []
        if started:
            await self._send_and_record(conn, started, results)
        for position in positions:
            if position.status != "created":
                results[position.id] = await _caught(drive_one(conn, position))
        for item in started:  # what the one-position path ends with (paper: nothing)
            if results.get(item.position.id) is None and not item.position.is_paper_trade:
                done = await _caught(self.protection.protect(conn, item.position))
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
            check_ms=_ms(checks_done - began),
            intents_ms=_ms(time.monotonic() - checks_done),
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
            bound = max(exposure_rows(lim) for lim in limits.values()) + 1
            await cur.execute(q("risk_exposures"), {"user_ids": users, "limit": bound})
            exposure: dict[tuple[str, bool], list[dict[str, Any]]] = {}
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

    # -- 3 and 4: the sends, then their answers recorded in one transaction --------------------

    async def _send_and_record(self, conn: Conn, started: list[Started], results: Results) -> None:
        self.ctx.crash_point("entry.committed")
        began = time.monotonic()
        await conn.execute(q("exec_bump_sends"), {"order_ids": [s.order.id for s in started]})
        answers = await self._send_all(started)
        self.ctx.crash_point("entry.sent")
        sent = time.monotonic()
        recorded: list[Answer] = []
        for item, answer in zip(started, answers, strict=True):
            if isinstance(answer, ExchangeError):
                failed = self.driver.send_failed(
                    conn, item.position, item.order, answer, first_send=True
                )
                results[item.position.id] = await _caught(failed)
            elif isinstance(answer, Exception):
                results[item.position.id] = answer
            else:
                recorded.append(Answer(item.exchange, item.position, item.order, answer))
        if not recorded:
            return
        outcomes = await record_fresh_answers(conn, recorded, self.ctx.crash_point)
        self.ctx.log.info(
            "entry_batch_recorded",
            orders=len(started),
            recorded=len(recorded),
            send_ms=_ms(sent - began),
            record_ms=_ms(time.monotonic() - sent),
        )
        for done, outcome in zip(recorded, outcomes, strict=True):
            pid = done.position.id
            if isinstance(outcome, Exception):
                results[pid] = outcome
            elif outcome is None:
                results[pid] = None
            else:
                results[pid] = await _caught(self.driver.after_settled(conn, done.order, outcome))

    async def _send_all(self, started: list[Started]) -> list[OrderState | Exception]:
        """Every order sent: paper ones placed together (``PaperExchange.place_orders``),
        the others ``send_concurrency`` at a time."""
        answers: list[OrderState | Exception] = [Exception("not sent")] * len(started)
        paper = [i for i, s in enumerate(started) if _paper_account(s.exchange) is not None]
        if paper:
            book = started[paper[0]].exchange
            assert isinstance(book, PaperExchange)
            orders = []
            for i in paper:
                item = started[i]
                account = _paper_account(item.exchange)
                assert account is not None
                orders.append((account, self.driver.sending(item.position, item.order)))
            try:
                placed = await book.place_orders(orders)
            except Exception as exc:  # the store's database: every one's outcome unknown
                placed = [exc] * len(paper)
            for i, answer in zip(paper, placed, strict=True):
                answers[i] = answer
        limiter = anyio.CapacityLimiter(self.send_concurrency)

        async def send(i: int, item: Started) -> None:
            async with limiter:
                try:
                    answers[i] = await self.driver.place(item.position, item.order, item.exchange)
                except Exception as exc:
                    answers[i] = exc

        async with anyio.create_task_group() as tg:
            for i, item in enumerate(started):
                if i not in paper:
                    tg.start_soon(send, i, item)
        return answers

    async def _log_foreign(self, conn: Conn, positions: Sequence[Position]) -> None:
        """Log the positions' order rows the worker did not write (they are ignored)."""
        cur = await conn.execute(
            q("exec_foreign_orders_of_positions"), {"position_ids": [p.id for p in positions]}
        )
        for position_id, order_id in await cur.fetchall():
            self.ctx.log.warning(
                "foreign_order_ignored", order_id=str(order_id), position_id=str(position_id)
            )


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


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _paper_account(exchange: Exchange) -> str | None:
    """The paper account ``exchange`` is a view of (None: not a paper account's)."""
    return exchange.account if isinstance(exchange, PaperExchange) else None


async def _caught(step: Awaitable[Any]) -> Exception | None:
    """Run one position's step: None, or what it raised (that position's result)."""
    try:
        await step
    except Exception as exc:
        return exc
    return None
