"""Running a claimed batch's handlers and settling each event in its claim.

The handlers of each event run in order; the first failure of a position's event stops that
position's later events in the batch (they stay pending, to keep per-position order).
Different positions run at the same time, in turns across users (worker/pipeline/turns.py):
up to ``pipeline.position_concurrency`` positions at once in the process, at most
``pipeline.user_concurrency`` of one user's, so one user's flood cannot take every slot. An
event whose handlers all succeed is marked processed; a handler that raises RetryLater
defers it by the delay it names; any other failure gets a retry delay and, after
``max_attempts``, parks the event as dead (``handler_failed`` / ``event_dead``, with the
traceback). A failure that is an outage (:func:`worker.driver_errors.outage_of`) is not the
event's: it defers the event without counting an attempt and is waited out
(worker/pipeline/outages.py). Every settlement is written in the claim's transaction.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from worker.db.outbox import Batch
from worker.driver_errors import outage_of
from worker.errors import Outage, RetryLater
from worker.events import Event, MalformedEvent, event_from_row, retry_delay
from worker.metrics import Metrics
from worker.pipeline.batches import Batched, Prepared, prepare
from worker.pipeline.handlers import Registry
from worker.pipeline.outages import Outages, OutageState
from worker.pipeline.turns import Run, in_turns
from worker.settings import PipelineSettings


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A claimed row that is not an event (unknown kind, malformed data): parked as dead."""

    event_id: int
    position_id: str
    error: str


def parsed(rows: Sequence[dict[str, Any]]) -> list[Event | Unreadable]:
    items: list[Event | Unreadable] = []
    for row in rows:
        try:
            items.append(event_from_row(row))
        except (MalformedEvent, KeyError, TypeError, ValueError) as exc:
            position = str(row.get("position_id") or "")
            items.append(Unreadable(int(row["id"]), position, str(exc)))
    return items


Counts = dict[str, int]


@dataclass(slots=True)
class Turns:
    """One batch's turns: when its budget runs out, how many were left, and the events
    handled by kind."""

    until: float  # monotonic seconds: no user's later position starts after this
    left: int = 0
    by_kind: Counts = field(default_factory=dict)
    prepared: Prepared = field(default_factory=dict)  # batch handlers' results (batches.py)
    stops: dict[str, int] = field(default_factory=dict)  # position -> its first event left


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first failure of a task group's (nested groups looked into)."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class UserSlots:
    """At most ``per_user`` positions of one user handled at once; a user's limiter lives
    while one of their positions holds or waits for it."""

    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._limiters: dict[str, tuple[anyio.CapacityLimiter, int]] = {}

    @asynccontextmanager
    async def slot(self, user_id: str) -> AsyncIterator[None]:
        limiter, users = self._limiters.get(user_id, (None, 0))
        if limiter is None:
            limiter = anyio.CapacityLimiter(self.per_user)
        self._limiters[user_id] = (limiter, users + 1)
        try:
            async with limiter:
                yield
        finally:
            limiter, users = self._limiters[user_id]
            if users == 1:
                del self._limiters[user_id]
            else:
                self._limiters[user_id] = (limiter, users - 1)

    @property
    def users(self) -> int:
        """Users with a position handled or waiting."""
        return len(self._limiters)


class HandlerRunner:
    def __init__(
        self,
        handlers: Registry,
        cfg: PipelineSettings,
        *,
        metrics: Metrics,
        log: Any,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.handlers, self.cfg, self.metrics, self.log = handlers, cfg, metrics, log
        self.clock = clock  # what the batch's budget is measured by
        # shared by every batch in flight (the dispatcher's drainers): process-wide bounds
        self.slots = anyio.CapacityLimiter(cfg.position_concurrency)
        self.users = UserSlots(cfg.user_concurrency)
        self.outages = Outages(cap=cfg.reconnect_max_seconds)
        self._rng = random.Random()
        self._kind_counters: dict[str, Any] = {}

    async def run(self, batch: Batch, items: Sequence[Event | Unreadable]) -> int:
        """How many were handled. Each position's events run in order, in turns across users
        (worker/pipeline/turns.py): the positions with a slow handler (an exchange's) at
        the same time, up to ``position_concurrency`` at once in the process and
        ``user_concurrency`` of one user's; the others one after another meanwhile (their
        handlers are quick: a task each would cost more than it saves). After
        ``batch_budget_seconds`` a slow position of a user whose slots are all taken, or
        beyond the user's first ``user_concurrency`` in the batch, does not start: those
        left (``batch.left``) go back to the outbox when the claim commits, and the next
        claim takes them in turn with other users' events; so do the events a batch left
        (``batches.py``: a user's beyond their share)."""
        began = self.clock()  # the budget counts the batch handlers' time too
        runs = in_turns(items)
        batched = Batched()
        if self.cfg.batch_handlers and not self.outages.by_target:  # else each event first
            # asks whether to wait an outage out
            batched = await prepare(self.handlers, runs, self.cfg.user_concurrency, self.log)
        prepared = batched.results
        turns = Turns(began + self.cfg.batch_budget_seconds, prepared=prepared)
        if batched.left:  # a user's beyond their share of the batch: the next claim's
            whole = {p for p, i in batched.left.items() if i == 0}
            turns.left += len(whole)
            runs = [run for run in runs if run.position_id not in whole]
            turns.stops = {p: i for p, i in batched.left.items() if i}
        slow: list[Run[Event | Unreadable]] = []
        quick: list[Run[Event | Unreadable]] = []
        for run in runs:
            (slow if self._slow(run, prepared) else quick).append(run)
        if len(slow) <= 1 or self.slots.total_tokens == 1:
            for run in runs:
                await self._run_position(batch, run, turns)
        else:
            try:
                async with anyio.create_task_group() as tg:
                    for run in slow:
                        tg.start_soon(self._take_turn, batch, run, turns)
                    for run in quick:  # meanwhile, one after another
                        await self._run_position(batch, run, turns)
            except BaseExceptionGroup as group:
                # a settlement failed (the claim's connection broke: every turn's alike): the
                # claim above sees that one error, as when the turns ran one at a time
                raise first_error(group) from None
        batch.left = turns.left
        for kind, count in turns.by_kind.items():
            self._processed_by_kind(kind).inc(count)
        return sum(turns.by_kind.values())

    def _slow(self, run: Run[Event | Unreadable], prepared: Prepared) -> bool:
        """Whether a handler of the run's events waits on I/O for long (an exchange), and
        has not run already in a batch."""
        return any(
            handler.slow and (handler.name, item.event_id) not in prepared
            for item in run.items
            if isinstance(item, Event)
            for handler in self.handlers.for_event(item)
        )

    async def _take_turn(self, batch: Batch, run: Run[Event | Unreadable], turns: Turns) -> None:
        """A slow position's run, once its user and the process have a slot free. Once the
        batch's budget is spent (``batch_budget_seconds``) the run is left for the next
        claim when its user still has no slot free (their other positions, in this batch or
        another, hold them all), or when it is one of a user's positions beyond their first
        ``user_concurrency`` in the batch."""
        budget = self.cfg.batch_budget_seconds > 0
        late = budget and run.turn >= self.cfg.user_concurrency
        async with contextlib.AsyncExitStack() as slots:
            ready = False
            with anyio.move_on_after(turns.until - self.clock() if budget else math.inf):
                await slots.enter_async_context(self.users.slot(run.user_id))
                ready = True
            if not ready:
                turns.left += 1
                return
            await slots.enter_async_context(self.slots)
            if late and self.clock() > turns.until:
                turns.left += 1
                return
            await self._run_position(batch, run, turns)

    async def _run_position(self, batch: Batch, run: Run[Event | Unreadable], turns: Turns) -> None:
        """A position's events in order; after a failure its later events wait (an
        unreadable one too: parked only in its turn, so it never lets a later event of its
        position overtake an earlier one that failed). Once the batch's budget is spent, a
        later event with a slow handler waits for the next claim too (its position's
        first event always runs): a user's position with many requests queued holds the
        claim for one request past the budget, not for all of them."""
        stop = turns.stops.get(run.position_id, len(run.items))
        for i, item in enumerate(run.items):
            if i >= stop or (i and isinstance(item, Event) and self._past_budget(turns, item)):
                turns.left += 1
                return
            if isinstance(item, Unreadable):
                self.log.error("event_unreadable", event_id=item.event_id, error=item.error)
                self.metrics.events_dead.inc()
                await batch.mark_dead(item.event_id, f"unreadable: {item.error}")
            elif await self._handle(batch, item, turns.prepared):
                await batch.handled(item.event_id)
                turns.by_kind[item.kind] = turns.by_kind.get(item.kind, 0) + 1
            else:
                return

    def _past_budget(self, turns: Turns, event: Event) -> bool:
        """Whether the batch's budget is spent and ``event`` would wait on I/O for long."""
        if self.cfg.batch_budget_seconds <= 0 or self.clock() <= turns.until:
            return False
        return any(
            handler.slow and (handler.name, event.event_id) not in turns.prepared
            for handler in self.handlers.for_event(event)
        )

    async def _handle(self, batch: Batch, event: Event, prepared: Prepared) -> bool:
        """Run the event's handlers in order; False when one did not succeed (the event is
        deferred or failed, and its position's later events wait). Whether a handler that
        met an outage is still waiting it out is decided before any of the event's handlers
        runs, so the ones before it (the audit log) do not repeat themselves. A handler
        that ran in a batch (``prepared``) is not called again: its result counts."""
        handlers = self.handlers.for_event(event)
        if self.outages.by_target:
            now = time.monotonic()
            for handler in handlers:
                waiting = self.outages.waiting_out(handler.name, now)
                if waiting is not None:
                    await self._defer_for_outage(batch, event, handler.name, waiting, None)
                    return False
        for handler in handlers:
            try:
                key = (handler.name, event.event_id)
                if key in prepared:
                    result = prepared.pop(key)
                    if result is not None:
                        raise result
                else:
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
                state = self.outage_met(outage, handler.name, event.event_id)
                self.outages.call_failed(state, time.monotonic())
                await self._defer_for_outage(batch, event, handler.name, state, outage)
                return False
            if self.outages.by_target:
                self.succeeded(handler.name)
        return True

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
        delay = self.outages.retry_in(state, time.monotonic())
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

    def outage_met(self, outage: Outage, who: str, event_id: int | None = None) -> OutageState:
        """``who`` (a handler, or the dispatcher) met an outage: the first sign of one is
        logged (``outage_started``) and shown (``position_worker_outage{target} 1``)."""
        state, started = self.outages.met(outage.target, who, time.monotonic())
        if started:
            self.metrics.outage.labels(outage.target).set(1)
            self.log.warning(
                "outage_started",
                target=outage.target,
                met_by=who,
                event_id=event_id,
                error=str(outage),
            )
        return state

    def succeeded(self, who: str) -> None:
        """``who`` succeeded: the outages that ends are logged once (``outage_over``)."""
        now = time.monotonic()
        for state in self.outages.succeeded(who):
            self.metrics.outage.labels(state.target).set(0)
            self.log.info(
                "outage_over",
                target=state.target,
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
            exc_info=exc,
        )
        if result.dead:
            self.metrics.events_dead.inc()

    def _processed_by_kind(self, kind: str) -> Any:
        counter = self._kind_counters.get(kind)
        if counter is None:
            counter = self._kind_counters[kind] = self.metrics.events_processed.labels(kind)
        return counter
