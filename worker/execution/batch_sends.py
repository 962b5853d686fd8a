"""The second half of a batch (``entry_batch.py``, ``request_batch.py``): many orders whose
intents are committed, sent, and their answers recorded in one transaction.

1. every order's ``send_attempts`` bumped in one statement (committed: from now on it may
   exist on the exchange), then the orders sent: paper orders placed together
   (``PaperExchange.place_orders``: one transaction), live ones ``send_concurrency`` at a
   time, each under its purpose's priority in the weight budget;
2. **one transaction** recording every answer (``recording_batch.py``: the same writes as
   the per-order path, a statement per step; one by one if that transaction fails); then
   the sends the exchange refused or left unknown, each as one by one (in one transaction,
   each in a savepoint of its own); then each recorded
   order's follow-ups (``Driver.after_settled``: protection).

An exchange error on a send is that order's alone (``Driver.send_failed``: a rejection, a
refused key, an outcome unknown), as one by one. The crash points are the one-order path's,
``<purpose>.committed`` and ``<purpose>.sent``, each reached once per batch.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from worker.db.queries import q
from worker.exchanges.base import Exchange, ExchangeError, OrderState
from worker.exchanges.budget import urgent
from worker.exchanges.paper import PaperExchange
from worker.execution.context import Context
from worker.execution.orders import Driver, priority_for
from worker.execution.recording import Answer
from worker.execution.recording_batch import record_fresh_answers
from worker.execution.rows import Conn, Order, Position

Results = dict[uuid.UUID, Exception | None]


@dataclass(frozen=True, slots=True)
class Started:
    """A position whose new order is recorded (committed), and where it goes."""

    position: Position
    order: Order
    exchange: Exchange


class BatchSends:
    def __init__(self, ctx: Context, driver: Driver, *, send_concurrency: int) -> None:
        self.ctx, self.driver = ctx, driver
        self.send_concurrency = max(1, send_concurrency)

    async def send_and_record(
        self, conn: Conn, started: Sequence[Started], results: Results, event: str
    ) -> None:
        """Send ``started``'s orders and record their answers; each position's result in
        ``results``. Logs ``event`` with the timings."""
        purposes = list(dict.fromkeys(s.order.purpose for s in started))
        for purpose in purposes:
            self.ctx.crash_point(f"{purpose}.committed")
        began = time.monotonic()
        await conn.execute(q("exec_bump_sends"), {"order_ids": [s.order.id for s in started]})
        answers = await self._send_all(started)
        for purpose in purposes:
            self.ctx.crash_point(f"{purpose}.sent")
        sent = time.monotonic()
        recorded: list[Answer] = []
        failed: list[tuple[Started, ExchangeError]] = []
        for item, answer in zip(started, answers, strict=True):
            if isinstance(answer, ExchangeError):
                failed.append((item, answer))
            elif isinstance(answer, Exception):
                results[item.position.id] = answer
            else:
                recorded.append(Answer(item.exchange, item.position, item.order, answer))
        # the fills first: a rejection's own transaction does not hold up anyone's fill
        outcomes = (
            await record_fresh_answers(conn, recorded, self.ctx.crash_point) if recorded else []
        )
        if failed:  # one commit for them all (each one's writes in a savepoint of its own)
            async with conn.transaction():
                for item, error in failed:
                    step = self.driver.send_failed(
                        conn, item.position, item.order, error, first_send=True
                    )
                    results[item.position.id] = await caught(step)
        if not recorded:
            return
        self.ctx.log.info(
            event,
            orders=len(started),
            recorded=len(recorded),
            send_ms=ms(sent - began),
            record_ms=ms(time.monotonic() - sent),
        )
        for done, outcome in zip(recorded, outcomes, strict=True):
            pid = done.position.id
            if isinstance(outcome, Exception):
                results[pid] = outcome
            elif outcome is None:
                results[pid] = None
            else:
                results[pid] = await caught(self.driver.after_settled(conn, done.order, outcome))

    async def _send_all(self, started: Sequence[Started]) -> list[OrderState | Exception]:
        """Every order sent: paper ones placed together (``PaperExchange.place_orders``),
        the others ``send_concurrency`` at a time."""
        answers: list[OrderState | Exception] = [Exception("not sent")] * len(started)
        paper = [i for i, s in enumerate(started) if paper_account(s.exchange) is not None]
        if paper:
            book = started[paper[0]].exchange
            assert isinstance(book, PaperExchange)
            orders = []
            for i in paper:
                item = started[i]
                account = paper_account(item.exchange)
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
                    with urgent(priority_for(item.order.purpose)):
                        answers[i] = await self.driver.place(
                            item.position, item.order, item.exchange
                        )
                except Exception as exc:
                    answers[i] = exc

        together = set(paper)
        async with anyio.create_task_group() as tg:
            for i, item in enumerate(started):
                if i not in together:
                    tg.start_soon(send, i, item)
        return answers


async def log_foreign(ctx: Context, conn: Conn, positions: Sequence[Position]) -> None:
    """Log the positions' order rows the worker did not write (they are ignored)."""
    cur = await conn.execute(
        q("exec_foreign_orders_of_positions"), {"position_ids": [p.id for p in positions]}
    )
    for position_id, order_id in await cur.fetchall():
        ctx.log.warning(
            "foreign_order_ignored", order_id=str(order_id), position_id=str(position_id)
        )


def ms(seconds: float) -> int:
    return round(seconds * 1000)


def paper_account(exchange: Exchange) -> str | None:
    """The paper account ``exchange`` is a view of (None: not a paper account's)."""
    return exchange.account if isinstance(exchange, PaperExchange) else None


async def caught(step: Awaitable[Any]) -> Exception | None:
    """Run one position's step: None, or what it raised (that position's result)."""
    try:
        await step
    except Exception as exc:
        return exc
    return None
