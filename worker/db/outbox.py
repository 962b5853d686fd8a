"""The outbox side of ``position_events``: claim, finish, fail, replay. Thin, async.

Driver errors are translated into :class:`worker.errors.DatabaseUnavailable` here (by
:func:`worker.driver_errors.translated_errors`), so the pipeline above never sees psycopg's
exceptions.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from worker.db.queries import q
from worker.driver_errors import translated_errors


@dataclass(frozen=True, slots=True)
class FailResult:
    attempts: int
    dead: bool


@dataclass(slots=True)
class Batch:
    """Events claimed by one open transaction; settle them through it.

    ``rows`` holds the events that may be handled now, in id order. Claimed events that
    must wait for an earlier event of their position stay locked, untouched, until the
    transaction ends: ``held_back`` counts them and ``retry_soon`` says whether one waits
    for another claim (worth a prompt retry) rather than for a retry delay.
    """

    conn: psycopg.AsyncConnection[Any]
    rows: list[dict[str, Any]]
    claimed: int
    held_back: int
    retry_soon: bool
    touch_every: float  # seconds; keeps the transaction from looking idle (lease_seconds / 3)
    min_pending: int | None = None  # lowest pending id >= the claim's floor (None: unknown)
    newest: int | None = None  # the highest id claimed (held back or not; None: none)
    behind_floor: bool = False  # an event held back waits for one below the claim's floor
    settled: bool = False  # its commit was sent
    left: int = 0  # positions not started within the batch's time budget (they go back)
    # nothing claimed, yet events are pending: other claims hold them (or their positions'
    # earlier events); worth a claim again once one of them ends
    busy: bool = False
    # first pending events of their positions among the claimed (the rest follow one of
    # them in this claim): as many as the limit, and more may be left for another claim
    heads: int = 0
    _done: list[int] = field(default_factory=list)
    _touched: float = field(default_factory=time.monotonic)

    async def handled(self, event_id: int) -> None:
        """Record one handled event; written with the next statement, or now if it is due."""
        self._done.append(event_id)
        if time.monotonic() - self._touched > self.touch_every:
            await self.flush()

    async def flush(self) -> None:
        """Mark the handled events processed (one statement; they commit with the claim)."""
        if self._done:
            self._touched = time.monotonic()
            await self.conn.execute(self._marking("mark_processed").encode())

    async def commit(self) -> None:
        """Mark what is left and commit, in one round trip."""
        statements, _ = self.settlement()
        await self.conn.execute(statements.encode())

    def settlement(self) -> tuple[str, int]:
        """The statements that mark what is left and commit, and how many results they
        return. Once only: after it the transaction is (about to be) over."""
        if self.settled:
            raise RuntimeError("this batch is already settled")
        self.settled = True
        if self._done:
            return self._marking("mark_processed_and_commit"), 2
        return "COMMIT", 1

    def _marking(self, name: str) -> str:
        ids = ",".join([str(int(i)) for i in self._done])  # digits and commas only
        self._done = []
        return q(name) % {"ids": ids}

    async def _execute(self, name: str, params: dict[str, Any]) -> psycopg.AsyncCursor[Any]:
        self._touched = time.monotonic()
        return await self.conn.execute(q(name), params)

    @staticmethod
    def _text(error: str) -> str:
        """What PostgreSQL can store: at most 2,000 characters, no NUL (a handler's error
        text is anything; a NUL would fail the settlement, and the batch, every time)."""
        return error[:2000].replace("\x00", "\\0")

    async def mark_failed(
        self, event_id: int, error: str, delay: float, max_attempts: int
    ) -> FailResult:
        params = {"id": event_id, "error": self._text(error), "delay": delay}
        cur = await self._execute("mark_failed", {**params, "max_attempts": max_attempts})
        row = await cur.fetchone()
        if row is None:  # cannot happen while we hold the lock; be explicit anyway
            return FailResult(attempts=0, dead=False)
        return FailResult(attempts=int(row[0]), dead=bool(row[1]))

    async def defer(self, event_id: int, delay: float, reason: str) -> None:
        params = {"id": event_id, "delay": delay, "error": self._text(reason)}
        await self._execute("defer_event", params)

    async def mark_dead(self, event_id: int, error: str) -> None:
        await self._execute("mark_dead", {"id": event_id, "error": self._text(error)})


def in_position_order(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int, bool]:
    """Keep the claimed events whose predecessor is handled, dead, or kept before them.

    Returns (events to handle, how many were held back, whether one of those waits for an
    event held by another claim rather than for a retry delay).
    """
    kept: list[dict[str, Any]] = []
    kept_ids: set[int] = set()
    blocked: set[Any] = set()
    retry_soon = False
    for row in rows:
        position, prev = row["position_id"], row["prev_id"]
        if position in blocked:
            continue
        if prev is None or not row["prev_pending"] or prev in kept_ids:
            kept.append(row)
            kept_ids.add(int(row["id"]))
        else:
            blocked.add(position)
            retry_soon = retry_soon or not row["prev_waiting"]
    return kept, len(rows) - len(kept), retry_soon


class Outbox:
    """Claims batches of events for one worker with row locks (FOR NO KEY UPDATE SKIP LOCKED):
    the oldest, and in a backlog other users' oldest too (fair to every user; see
    :data:`OTHERS_PER_LIMIT`).

    The claim's transaction stays open while the batch is published and handled, and every
    settlement goes through it; it commits when the ``claim`` block ends and rolls back (the
    events go back, untouched) when the block raises. A worker that dies releases its
    claims with its connection; a hung one is cut off by PostgreSQL's
    idle_in_transaction_session_timeout (``pipeline.lease_seconds``, set on the pool).
    """

    def __init__(self, pool: AsyncConnectionPool[Any], lease_seconds: float) -> None:
        self.pool, self.touch_every = pool, lease_seconds / 3

    @asynccontextmanager
    async def claim(self, limit: int, floor: int = 0) -> AsyncIterator[Batch]:
        """Claim up to ``limit`` events with id >= ``floor`` (see worker/pipeline/claim_floor.py);
        the batch commits when the block ends."""
        async with self.chain() as chain:
            yield await chain.claim(limit, floor)

    @asynccontextmanager
    async def chain(self) -> AsyncIterator[ClaimChain]:
        """Claims one after the other on one connection (see :class:`ClaimChain`). The open
        batch commits when the block ends, and rolls back when it raises."""
        async with translated_errors(), self.pool.connection() as conn:
            try:
                chain = ClaimChain(conn, self.touch_every)
                yield chain
                await chain.commit()
            except BaseException:
                await _roll_back(conn)
                raise


# A full claim (a backlog) also takes the oldest event of up to limit / OTHERS_PER_LIMIT users
# it holds nothing of (schema/0016: outbox_claim_fair): one user's flood of events cannot
# fill every claim while another user's wait.
OTHERS_PER_LIMIT: Final = 5


class ClaimChain:
    """Claims on one connection, each committing the batch before it in the same round trip.

    A claim's transaction is opened and committed by hand (``BEGIN; SELECT ...`` and
    ``...; COMMIT``, on the pool's autocommit connections). When the next claim is due as
    soon as a batch is done (a backlog, or events that came in meanwhile), the two are sent
    as one: ``SELECT outbox_mark_processed(...); COMMIT; BEGIN; SELECT * FROM
    outbox_claim_fair(...)``, one round trip where there were two. If the claim fails after the
    COMMIT, the earlier batch stays committed (the statements run in order).
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any], touch_every: float) -> None:
        self.conn, self.touch_every = conn, touch_every
        self.open: Batch | None = None  # claimed, not yet settled

    async def claim(self, limit: int, floor: int = 0) -> Batch:
        """Commit the open batch (if any) and claim the next, in one round trip."""
        others = max(1, int(limit) // OTHERS_PER_LIMIT)
        query = q("claim_begin") % {"floor": int(floor), "limit": int(limit), "others": others}
        before = 1  # BEGIN's result
        if self.open is not None:
            settlement, results = self.open.settlement()
            query, before = f"{settlement}; {query}", before + results
            self.open = None
        cur = self.conn.cursor(row_factory=dict_row)
        await cur.execute(query.encode())
        for _ in range(before):
            cur.nextset()
        rows: list[dict[str, Any]] = await cur.fetchall()
        busy = rows[-1] if rows and rows[-1]["id"] is None else None
        if busy is not None:
            rows = []
        kept, held_back, retry_soon = in_position_order(rows)
        batch = Batch(self.conn, kept, len(rows), held_back, retry_soon, self.touch_every)
        if busy is not None:
            batch.busy, batch.min_pending = True, busy["min_pending"]
        if rows:
            batch.min_pending, batch.newest = rows[0]["min_pending"], int(rows[-1]["id"])
        batch.behind_floor = held_back > 0 and any(
            r["prev_pending"] and r["prev_id"] < floor for r in rows
        )
        batch.heads = sum(1 for r in rows if r["prev_id"] is None or not r["prev_pending"])
        self.open = batch
        return batch

    async def commit(self) -> None:
        """Commit the open batch, if any."""
        if self.open is not None:
            batch, self.open = self.open, None
            await batch.commit()


ROLLBACK_SECONDS = 5.0


async def _roll_back(conn: psycopg.AsyncConnection[Any]) -> None:
    """End the claim's transaction, if the connection still has one (the events go back)."""
    if conn.info.transaction_status == TransactionStatus.IDLE or conn.closed:
        return
    with anyio.CancelScope(shield=True), contextlib.suppress(psycopg.Error):
        with anyio.move_on_after(ROLLBACK_SECONDS) as late:
            await conn.execute(b"ROLLBACK")
        if late.cancelled_caught:  # a half-open socket: the server ends it on its own
            await conn.close()


async def replay(pool: AsyncConnectionPool[Any], event_id: int | None) -> list[int]:
    """Re-queue one dead event (or all of them with ``None``) and wake the workers."""
    async with translated_errors(), pool.connection() as conn:
        if event_id is None:
            cur = await conn.execute(q("replay_all_dead"))
        else:
            cur = await conn.execute(q("replay_event"), {"id": event_id})
        ids = [int(r[0]) for r in await cur.fetchall()]
        await conn.execute(q("wake_workers"))
    return sorted(ids)
