"""The dispatcher: claim a batch, publish it, run the handlers, settle it.

One loop per worker process. It drains the outbox whenever the listener wakes it and at
least every ``poll_interval`` seconds. For each batch, claimed with row locks in one open
transaction (oldest first, in per-position order; see :class:`worker.db.outbox.Outbox`):

1. publish every event to its streams in one pipelined round trip (idempotent);
2. run the handlers of each event in order; the first failure of a position's event stops
   that position's later events in the batch (they stay pending, to keep per-position order);
3. mark the handled events processed in one statement and commit; failed ones get a retry
   delay and, after ``max_attempts``, are parked as dead, in the same transaction. When the
   next claim is due at once (a backlog, or events that came in meanwhile), the commit and
   the next claim go in one round trip.

Infrastructure failures (PostgreSQL or Redis unreachable) are not the event's fault and
never kill the process. When the dispatcher's own claim, settlement or publish fails, the
claim rolls back (the events go back untouched), the loop backs off and tries again. When a
handler meets one (:func:`outage_of` classifies its exception: the engine's psycopg errors,
the pool's timeouts, Redis connection errors), the event is deferred like a RetryLater,
without counting an attempt, and the dispatcher waits the outage out (see ``_handle``). If
the outage broke the claim's own connection too, the deferral fails with it and the whole
claim rolls back instead: either way, an outage never parks an event.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import anyio
import psycopg
import redis.exceptions
from anyio.abc import TaskGroup

from worker.db.outbox import Batch, ClaimChain, Outbox
from worker.errors import DatabaseUnavailable, Outage, RetryLater, StreamUnavailable
from worker.events import (
    Event,
    MalformedEvent,
    ai_monitoring_request_for,
    event_from_row,
    notification_for,
    retry_delay,
    stream_fields,
)
from worker.logs import lines_held
from worker.metrics import Metrics
from worker.pipeline.floor import ClaimFloor
from worker.pipeline.handlers import Registry
from worker.pipeline.pace import Arrivals, PollSwitch
from worker.pipeline.streams import Publication, StreamPublisher
from worker.settings import PipelineSettings, StreamSettings

# A wake-up that arrives while a batch is being handled waits for that batch to be settled
# (its drainer claims again right after) unless the batch is still running this long after
# its claim; then another drainer starts (see Dispatcher._serve).
HURRY_AFTER: Final = 0.005
# A claim (not full) that saw at least this many events arrive since the previous one began
# means events are arriving fast: the next claim waits until ``linger_seconds`` after this
# one began (see _serve).
LINGER_MIN_EVENTS: Final = 4
# Polling: after this many claims in a row saw LINGER_MIN_EVENTS or more arrive (or were
# full), the dispatcher claims every ``linger_seconds`` on its own and the listener's
# wake-ups are paused (see _serve) ...
POLL_AFTER_BUSY_CLAIMS: Final = 3
# ... and ends after this many claims in a row found fewer: with other workers sharing the
# stream, a claim can come back empty while events pour in (see worker/pipeline/pace.py).
POLL_END_AFTER_QUIET_CLAIMS: Final = 2
# An outage met by a handler defers its event this long at first, twice as long after each
# call of a handler that met it again, up to ``reconnect_max_seconds`` (with jitter, like the
# dispatcher's own reconnection backoff).
OUTAGE_BASE_SECONDS: Final = 0.1
# Who met an outage, besides handlers (by name): the dispatcher's claims, settlements and
# publishes.
DISPATCHER: Final = "dispatcher"

# -- what a handler's exception says about the servers (outage_of) ------------------------
# PostgreSQL SQLSTATE classes of a server that is unavailable or cut the session: 08
# connection exception, 53 insufficient resources (too many connections, out of memory,
# disk full), 57 operator intervention (admin or crash shutdown, cannot connect now,
# database dropped, idle session timeout), 58 system error (I/O).
_PG_OUTAGE_CLASSES: Final = frozenset({"08", "53", "57", "58"})
# ... single states: a session ended by idle_in_transaction_session_timeout (25P03); a
# read-only server (25006: a standby after a failover, or a primary made read-only, as
# Supabase does when its disk is full).
_PG_OUTAGE_STATES: Final = frozenset({"25P03", "25006"})
# 57014 query_canceled (statement_timeout, pg_cancel_backend) may be the event's own slow
# statement: it counts as the event's failure, so an event cannot be retried forever for
# it. So do the other OperationalErrors with a SQLSTATE: 40 (serialization failure,
# deadlock), 54 (program limit exceeded), 55 (lock not available, object in use).
_PG_EVENT_STATES: Final = frozenset({"57014"})
# Redis: unreachable, dropped, timed out, loading (BusyLoadingError is a ConnectionError),
# a cluster without a quorum, a replica that became read-only after a failover.
_REDIS_OUTAGES: Final = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.ReadOnlyError,
)


def outage_of(exc: BaseException) -> Outage | None:
    """The outage behind a handler's exception, or None when the error is the event's own
    (it then counts toward ``max_attempts``). Pure.

    An outage is :class:`Outage` itself (DatabaseUnavailable, StreamUnavailable); any
    ``psycopg.OperationalError`` without a SQLSTATE (raised by the client: connection
    refused, lost or closed, and the pool's PoolTimeout, TooManyRequests, PoolClosed); a
    PostgreSQL error of the classes or states above; a Redis error of ``_REDIS_OUTAGES``.
    The exception is looked at, then what it was raised from or while handling
    (``__cause__``, ``__context__``: the engine's unlock failing on the connection that
    broke the statement before it) and the members of an exception group; the first outage
    found wins. Returns an Outage that names the original error."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        found = _outage(current)
        if found is not None:
            return found
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        if current.__cause__ is not None:
            todo.append(current.__cause__)
        elif current.__context__ is not None and not current.__suppress_context__:
            todo.append(current.__context__)
    return None


def _outage(exc: BaseException) -> Outage | None:
    """:func:`outage_of` for one exception, without its chain."""
    if isinstance(exc, Outage):
        return exc
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:
            cut = isinstance(exc, psycopg.OperationalError)
        else:
            cut = state not in _PG_EVENT_STATES and (
                state[:2] in _PG_OUTAGE_CLASSES or state in _PG_OUTAGE_STATES
            )
        return DatabaseUnavailable(_described(exc)) if cut else None
    if isinstance(exc, _REDIS_OUTAGES):
        return StreamUnavailable(_described(exc))
    return None


def _described(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # driver messages span lines
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(slots=True)
class OutageState:
    """An outage of one target as this dispatcher meets it, from its first sign to its end
    (see Dispatcher._outage_met and _outage_over)."""

    target: str  # database | redis
    started: float  # monotonic
    met_by: set[str] = field(default_factory=set)  # handler names, DISPATCHER
    failed_calls: int = 0  # handler calls that met it: the backoff's attempt number
    deferred: int = 0  # events deferred for it
    retry_at: float = 0.0  # handlers in met_by are not called before this (monotonic)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A claimed row that is not an event (unknown kind, malformed data): parked as dead."""

    event_id: int
    position_id: str
    error: str


class Dispatcher:
    def __init__(
        self,
        outbox: Outbox,
        publisher: StreamPublisher,
        handlers: Registry,
        *,
        pipeline: PipelineSettings,
        streams: StreamSettings,
        metrics: Metrics,
        log: Any,
    ) -> None:
        self.outbox, self.publisher, self.handlers = outbox, publisher, handlers
        self.cfg, self.streams, self.metrics, self.log = pipeline, streams, metrics, log
        self.processed = 0
        self.chained = 0  # claims sent with the commit of the batch before them
        self._wake = anyio.Event()
        self._stopping = False
        self.stopped = anyio.Event()
        self._rng = random.Random()
        self._kind_counters: dict[str, Any] = {}
        self._drainers = self._claiming = self._failures = 0
        self._wakes = self._claimed_through = 0  # wake-ups seen; covered by a claim begun
        self._floor = ClaimFloor(settle=min(1.0, pipeline.poll_interval))
        self._full_due = True  # the next claim starts from id 0 (see worker.pipeline.floor)
        self._batch_started = 0.0  # when the latest batch was claimed (monotonic)
        self._linger_until = 0.0  # no claim before this (monotonic), unless a backlog
        self._lingering = 0  # drainers waiting for _linger_until
        self._signalled = self._pausing = 0  # the wake-up count last signalled; drainers paused
        self._arrivals = Arrivals(LINGER_MIN_EVENTS, pipeline.linger_seconds)
        self._poll = PollSwitch(
            POLL_AFTER_BUSY_CLAIMS, POLL_END_AFTER_QUIET_CLAIMS, pipeline.linger_seconds > 0
        )
        # told when polling starts (True) and ends (False): the listener pauses and resumes
        self.on_polling: Callable[[bool], None] = lambda polling: None
        self.outages: dict[str, OutageState] = {}  # by target, while they last

    @property
    def polling(self) -> bool:
        """Claiming every ``linger_seconds`` on its own, wake-ups paused (see _serve)."""
        return self._poll.on

    @property
    def failures_in_a_row(self) -> int:
        """Infrastructure failures since the last batch that committed (the backoff's
        attempt number; a claim that succeeds and then fails to publish does not reset it)."""
        return self._failures

    def _processed_by_kind(self, kind: str) -> Any:
        counter = self._kind_counters.get(kind)
        if counter is None:
            counter = self._kind_counters[kind] = self.metrics.events_processed.labels(kind)
        return counter

    def wake(self) -> None:
        """A notification arrived. Under a steady stream of commits most of them find a
        wake-up already signalled and not yet covered by a claim: they are only counted
        (the serve loop and the drainers look at the counters), which saves a task switch
        per notification. A drainer pausing behind another claim is always signalled."""
        self._wakes += 1
        if self._signalled <= self._claimed_through or self._pausing:
            self._signalled = self._wakes
            self._signal()

    def stop(self) -> None:
        """Stop claiming; the batch in hand is finished first."""
        self._stopping = True
        self._signal()

    def _signal(self) -> None:
        """Wake whoever waits now (the serve loop, a paused drainer). The event is swapped
        before it is set, so a drainer that signals and then waits is not woken by its own
        signal. Waiters re-check state (counters), never the event."""
        event, self._wake = self._wake, anyio.Event()
        event.set()

    async def run(self) -> None:
        try:
            while not self._stopping:
                try:
                    async with anyio.create_task_group() as tg:
                        await self._serve(tg)
                except* (DatabaseUnavailable, StreamUnavailable) as group:
                    if self._poll.stop():  # nobody claims while backing off
                        self._polling_switched()
                    self._failures += 1
                    exc = group.exceptions[0]
                    while isinstance(exc, ExceptionGroup):  # from a nested task group
                        exc = exc.exceptions[0]
                    self._outage_met(exc, DISPATCHER)
                    await self._back_off(exc, self._failures)
        finally:
            self.stopped.set()

    async def _back_off(self, exc: Outage, failures: int) -> None:
        target = exc.target
        delay = retry_delay(failures, 0.1, self.cfg.reconnect_max_seconds, self._rng)
        self.metrics.reconnects.labels(target).inc()
        self.log.warning(
            "dispatcher_backing_off",
            target=target,
            error=str(exc),
            attempt=failures,
            delay_seconds=round(delay, 3),
        )
        with anyio.move_on_after(delay):
            while not self._stopping:
                await self._wake.wait()

    async def _serve(self, tg: TaskGroup) -> None:
        """Start drainers as wake-ups come in; a full claim every ``poll_interval`` seconds.

        A drainer claims, handles and settles batches until a claim comes back short with
        no wake-up left uncovered (one that arrived after the latest claim began). While
        claims come back full (a backlog), more drainers join, up to ``concurrency``, so that
        while one waits for PostgreSQL another publishes to Redis. A wake-up that arrives
        while every drainer is past its claim is left to the running drainer, which claims
        again as soon as its batch is settled (a millisecond or two): under a steady stream
        of commits that turns many one-event claims into fewer larger ones, each claim
        costing the worker and PostgreSQL far more than an event does. Only if that batch
        is still running ``HURRY_AFTER`` seconds later (a handler waiting on an exchange)
        does another drainer start, so slow handlers do not hold up everyone's latency.
        Per-position order still holds: a claim leaves alone any event whose predecessor
        another claim holds.

        Linger: when at least ``LINGER_MIN_EVENTS`` events arrived since the previous claim
        (what the claim found, or more when other workers share the stream: see
        worker/pipeline/pace.py) and the claim was not full, events are arriving faster
        than claims go round, and the next claim waits until ``linger_seconds`` after that
        claim began. At saturation that makes claims twice as large and half as many (each
        claim's statements cost PostgreSQL as much as a few events); at a trickle (fewer
        events per claim) nothing waits, so latency at moderate rates is untouched. A full
        claim (a backlog) never waits.

        Polling: after ``POLL_AFTER_BUSY_CLAIMS`` such claims in a row (or full ones) the
        drainer stops waiting for wake-ups and claims every ``linger_seconds`` on its own,
        and the listener is told to pause (UNLISTEN): at that rate every notification
        finds a claim already due, and receiving one costs the worker and PostgreSQL more
        than the rest of the pipeline's work per event. ``POLL_END_AFTER_QUIET_CLAIMS``
        claims in a row that would not linger end it (one empty claim is not enough: with
        several workers each claim takes a share, and some find none): the listener
        LISTENs again and then wakes the dispatcher, so an event committed between that
        claim and the LISTEN is claimed right after. (A network driver turns its interrupts
        off while it polls a busy card, the same way.) At 500 events/s claims rarely find
        four events, so moderate rates keep their latency. With ``linger_seconds = 0`` it
        never polls.
        """
        self._drainers = self._claiming = 0
        self._wakes += 1  # (re)started: drain whatever is there
        self._full_due = True
        next_poll = time.monotonic() + self.cfg.poll_interval
        while not self._stopping:
            now = time.monotonic()
            if now >= next_poll:
                self._wakes += 1  # the periodic poll, in case a wake-up was lost
                self._full_due = True  # ... or an event committed below the floor
                next_poll = now + self.cfg.poll_interval
            deadline = next_poll
            idle = not (self._claiming or self._lingering) and self._drainers < self.cfg.concurrency
            if idle and self._uncovered():
                if self._drainers:
                    start_at = self._batch_started + HURRY_AFTER
                else:
                    start_at = max(now, self._linger_until)
                if start_at <= now:
                    self._add_drainer(tg)
                else:
                    deadline = min(deadline, start_at)
            with anyio.move_on_after(deadline - now):
                await self._wake.wait()

    def _uncovered(self) -> bool:
        return self._wakes > self._claimed_through

    def _add_drainer(self, tg: TaskGroup) -> None:
        self._drainers += 1
        tg.start_soon(self._drain_one, tg)

    async def _drain_one(self, tg: TaskGroup) -> None:
        pause = 0.0
        try:
            while not self._stopping:
                batch, full = await self._drain_chain(tg)
                self._committed()  # a batch went all the way (not just its claim)
                if self._drainers > 1:
                    self._signal()  # committed: a claim held back behind ours may go now
                if batch.retry_soon:  # a position's earlier event is held by another claim
                    pause = min(max(2 * pause, 0.005), self.cfg.poll_interval)
                    self._pausing += 1
                    try:
                        with anyio.move_on_after(pause):
                            await self._wake.wait()
                    finally:
                        self._pausing -= 1
                    continue
                pause = 0.0
                # polling, one drainer keeps claiming; extra ones leave with the backlog
                polls = self.polling and self._drainers == 1
                if not (full or polls or self._uncovered()):
                    break
                if not full:
                    await self._linger()
        finally:
            self._drainers -= 1
            self._signal()  # the serve loop looks again (a wake-up may be uncovered)

    async def _drain_chain(self, tg: TaskGroup) -> tuple[Batch, bool]:
        """Claim and process batches on one connection for as long as the next claim is due
        the moment a batch is done; each claim commits the batch before it in the same round
        trip (see :class:`worker.db.outbox.ClaimChain`). Returns the last batch, committed,
        and whether it was full."""
        async with self.outbox.chain() as chain:
            while True:
                batch, full = await self._claim(chain, tg)
                await self._process(batch)
                if not self._next_claim_due(batch, full):
                    return batch, full

    async def _claim(self, chain: ClaimChain, tg: TaskGroup) -> tuple[Batch, bool]:
        self._claimed_through = max(self._claimed_through, self._wakes)
        claim_started, wakes = time.monotonic(), self._wakes
        from_zero, self._full_due = self._full_due, False
        floor = 0 if from_zero else self._floor.value
        settles = chain.open is not None
        self._claiming += 1
        try:
            batch = await chain.claim(self.cfg.batch_size, floor)
        finally:
            self._claiming -= 1
        if settles:  # the batch before it committed
            self._committed()
            self.chained += 1
            if self._drainers > 1:
                self._signal()
        self._batch_started = time.monotonic()
        self._floor.observe(batch.min_pending, full=from_zero, now=self._batch_started)
        if batch.behind_floor:  # only a full claim can reach it
            self._full_due = True
        if self._uncovered():
            self._signal()  # a wake-up came during the claim: another may go
        # a batch held back whole is no backlog to add drainers for
        full = batch.claimed >= self.cfg.batch_size and bool(batch.rows)
        arrivals = self._arrivals.after_claim(
            started=claim_started, wakes=wakes, found=len(batch.rows), newest=batch.newest
        )
        fast = arrivals >= LINGER_MIN_EVENTS
        if self._poll.after_claim(full or fast):
            self._polling_switched()
        if not full:
            self._linger_until = claim_started + (self.cfg.linger_seconds if fast else 0.0)
        if full and self._drainers < self.cfg.concurrency:
            self._add_drainer(tg)  # claims the next batch while this one runs
        return batch, full

    def _committed(self) -> None:
        """A batch committed: the dispatcher's backoff starts over, and an outage that only
        the dispatcher met is over."""
        self._failures = 0
        if self.outages:
            self._outage_over(DISPATCHER)

    def _next_claim_due(self, batch: Batch, full: bool) -> bool:
        """Whether to claim again right away, committing ``batch`` on the way: a full batch
        (a backlog), or a wake-up or poll due with no linger left. Not while stopping, nor
        when the batch held back an event another claim holds (that one pauses first)."""
        if self._stopping or batch.retry_soon:
            return False
        if full:
            return True
        polls = self.polling and self._drainers == 1
        return (polls or self._uncovered()) and self._linger_until <= time.monotonic()

    def _polling_switched(self) -> None:
        self.metrics.wakeups_paused.set(1 if self._poll.on else 0)
        self.on_polling(self._poll.on)

    async def _linger(self) -> None:
        """Wait for ``_linger_until`` (a wake-up does not cut it short; a stop does)."""
        self._lingering += 1
        try:
            while not self._stopping and (left := self._linger_until - time.monotonic()) > 0:
                with anyio.move_on_after(left):
                    await self._wake.wait()
        finally:
            self._lingering -= 1

    async def _process(self, batch: Batch) -> int:
        items = self._parse(batch)
        events = [item for item in items if isinstance(item, Event)]
        if events:  # StreamUnavailable: the claim rolls back, the events go back
            await self._publish(events)
        with lines_held():  # the batch's audit lines in one write
            handled = await self._run_handlers(batch, items)
        self.processed += handled
        return handled

    def _parse(self, batch: Batch) -> list[Event | Unreadable]:
        items: list[Event | Unreadable] = []
        for row in batch.rows:
            try:
                items.append(event_from_row(row))
            except (MalformedEvent, KeyError, TypeError, ValueError) as exc:
                position = str(row.get("position_id") or "")
                items.append(Unreadable(int(row["id"]), position, str(exc)))
        return items

    async def _publish(self, events: Sequence[Event]) -> None:
        pubs = [pub for event in events for pub in self.publications(event)]
        started = time.perf_counter()
        await self.publisher.publish(pubs)
        self.metrics.publish_latency.observe(time.perf_counter() - started)
        now = datetime.now(UTC)
        self.metrics.commit_to_stream.observe_many(
            [(now - event.occurred_at).total_seconds() for event in events]
        )

    def publications(self, event: Event) -> list[Publication]:
        pubs = [
            Publication(
                self.streams.events, event.event_id, event.position_id, stream_fields(event)
            )
        ]
        extra = (
            (self.streams.notifications, notification_for(event)),
            (self.streams.ai_monitoring, ai_monitoring_request_for(event)),
        )
        for stream, fields in extra:
            if fields is not None:
                pubs.append(Publication(stream, event.event_id, event.position_id, fields))
        return pubs

    async def _run_handlers(self, batch: Batch, items: Sequence[Event | Unreadable]) -> int:
        """How many were handled; after a failure the position's later events wait (an
        unreadable one too: parked only in its turn, so it never lets a later event of its
        position overtake an earlier one that failed)."""
        by_kind: dict[str, int] = {}
        blocked: set[str] = set()
        for item in items:
            if item.position_id in blocked:
                continue
            if isinstance(item, Unreadable):
                self.log.error("event_unreadable", event_id=item.event_id, error=item.error)
                self.metrics.events_dead.inc()
                await batch.mark_dead(item.event_id, f"unreadable: {item.error}")
            elif await self._handle(batch, item):
                await batch.handled(item.event_id)
                by_kind[item.kind] = by_kind.get(item.kind, 0) + 1
            else:
                blocked.add(item.position_id)
        for kind, count in by_kind.items():
            self._processed_by_kind(kind).inc(count)
        return sum(by_kind.values())

    async def _handle(self, batch: Batch, event: Event) -> bool:
        """Run the event's handlers in order; False when one did not succeed (the event is
        deferred or failed, and its position's later events wait).

        A handler that meets an outage (:func:`outage_of`) defers the event without
        counting an attempt, for a backoff that grows with each call that meets it again
        (capped at ``reconnect_max_seconds``); until that backoff runs out, events for the
        handlers that met it are deferred without calling them, so an outage costs one
        failing call per backoff step instead of one per event (a pool timeout per event
        would hold the batch for minutes). That is decided before any of the event's
        handlers runs, so the ones before it (the audit log) do not repeat themselves."""
        handlers = self.handlers.for_event(event)
        if self.outages:
            for handler in handlers:
                waiting = self._waiting_out(handler.name)
                if waiting is not None:
                    await self._defer_for_outage(batch, event, handler.name, waiting, None)
                    return False
        for handler in handlers:
            try:
                await handler.handle(event)
            except RetryLater as exc:
                self.log.warning(
                    "event_deferred",
                    event_id=event.event_id,
                    handler=handler.name,
                    reason=str(exc),
                    retry_in_seconds=round(exc.delay, 3),
                )
                await batch.defer(event.event_id, exc.delay, f"{handler.name}: {exc}")
                return False
            except Exception as exc:
                outage = outage_of(exc)
                if outage is None:
                    await self._failed(batch, event, handler.name, exc)
                    return False
                state = self._outage_met(outage, handler.name, event.event_id)
                state.failed_calls += 1
                cap = self.cfg.reconnect_max_seconds
                backoff = retry_delay(state.failed_calls, OUTAGE_BASE_SECONDS, cap, self._rng)
                state.retry_at = time.monotonic() + backoff
                await self._defer_for_outage(batch, event, handler.name, state, outage)
                return False
            if self.outages:
                self._outage_over(handler.name)
        return True

    def _waiting_out(self, handler: str) -> OutageState | None:
        """The outage this handler met whose backoff has not run out yet, if any."""
        now = time.monotonic()
        for state in self.outages.values():
            if handler in state.met_by and now < state.retry_at:
                return state
        return None

    async def _defer_for_outage(
        self,
        batch: Batch,
        event: Event,
        handler: str,
        state: OutageState,
        outage: Outage | None,
    ) -> None:
        """Defer the event until the outage's backoff runs out, without counting an attempt.
        ``outage``: what the handler's call just met; None when it was not called. Logged
        at debug level only: the outage itself is logged once (``outage_started``)."""
        delay = max(state.retry_at - time.monotonic(), 0.0)
        reason = f"{state.target} unavailable" + (f": {outage}" if outage is not None else "")
        await batch.defer(event.event_id, delay, f"{handler}: {reason}")
        state.deferred += 1
        self.metrics.outage_deferrals.labels(state.target).inc()
        self.log.debug(
            "event_waiting_out_outage",
            event_id=event.event_id,
            position_id=event.position_id,
            handler=handler,
            target=state.target,
            called=outage is not None,
            retry_in_seconds=round(delay, 3),
        )

    def _outage_met(self, outage: Outage, who: str, event_id: int | None = None) -> OutageState:
        """``who`` (a handler, or DISPATCHER) met an outage: the first sign of one is logged
        (``outage_started``) and shown (``position_worker_outage{target} 1``)."""
        state = self.outages.get(outage.target)
        if state is None:
            state = self.outages[outage.target] = OutageState(outage.target, time.monotonic())
            self.metrics.outage.labels(outage.target).set(1)
            self.log.warning(
                "outage_started",
                target=outage.target,
                met_by=who,
                event_id=event_id,
                error=str(outage),
            )
        state.met_by.add(who)
        return state

    def _outage_over(self, who: str) -> None:
        """``who`` succeeded. An outage that a handler met is over when such a handler
        succeeds (the dispatcher's claims go through another pool: one that commits says
        nothing about the handlers' connections); one that only the dispatcher met is over
        when a batch commits. Logged once (``outage_over``)."""
        now = time.monotonic()
        for target, state in list(self.outages.items()):
            if who not in state.met_by:
                continue
            if who == DISPATCHER and len(state.met_by) > 1:
                state.met_by.discard(who)  # a handler met it too: it ends with its success
                continue
            del self.outages[target]
            self.metrics.outage.labels(target).set(0)
            self.log.info(
                "outage_over",
                target=target,
                seconds=round(now - state.started, 3),
                deferred=state.deferred,
                failed_calls=state.failed_calls,
            )

    async def _failed(self, batch: Batch, event: Event, handler: str, exc: Exception) -> None:
        self.metrics.handler_failures.labels(handler).inc()
        delay = retry_delay(
            event.attempts + 1, self.cfg.retry_base_seconds, self.cfg.retry_max_seconds, self._rng
        )
        error = f"{handler}: {type(exc).__name__}: {exc}"
        result = await batch.mark_failed(event.event_id, error, delay, self.cfg.max_attempts)
        log = self.log.error if result.dead else self.log.warning
        log(
            "event_dead" if result.dead else "handler_failed",
            event_id=event.event_id,
            position_id=event.position_id,
            type=event.type,
            handler=handler,
            error=error,
            attempts=result.attempts,
            retry_in_seconds=None if result.dead else round(delay, 3),
        )
        if result.dead:
            self.metrics.events_dead.inc()
