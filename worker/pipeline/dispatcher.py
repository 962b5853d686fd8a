"""The dispatcher: claim a batch, publish it, run the handlers, settle it.

One loop per worker process. It drains the outbox whenever the listener wakes it and at
least every ``poll_interval`` seconds. For each batch, claimed with row locks in one open
transaction (oldest first, in per-position order; see :class:`worker.db.outbox.Outbox`):

1. publish every event to its streams in one pipelined round trip (idempotent);
2. run the handlers of each event in order (worker/pipeline/handling.py), positions at the
   same time in turns across users; the first failure of a position's event stops that
   position's later events in the batch (they stay pending, to keep per-position order);
   a flooding user's positions not started within the batch's time budget stay pending
   too, and the next claim follows at once;
3. mark the handled events processed in one statement and commit; failed ones get a retry
   delay and, after ``max_attempts``, are parked as dead, in the same transaction. When the
   next claim is due at once (a backlog, or events that came in meanwhile), the commit and
   the next claim go in one round trip.

This module does the I/O and the waiting; when to claim, how many drainers run, whether a
claim chains, lingers or polls, and how long to back off are decided by the pure
:class:`~worker.pipeline.claim_schedule.ClaimSchedule`.

Infrastructure failures (PostgreSQL or Redis unreachable) are not the event's fault and
never kill the process. When the dispatcher's own claim, settlement or publish fails, the
claim rolls back (the events go back untouched), the loop backs off and tries again. When a
handler meets one (:func:`worker.driver_errors.outage_of` classifies its exception: the
engine's psycopg errors, the pool's timeouts, Redis connection errors), the event is
deferred like a RetryLater, without counting an attempt, and the dispatcher waits the outage
out (worker/pipeline/outages.py). If the outage broke the claim's own connection too, the
deferral fails with it and the whole claim rolls back instead: either way, an outage never
parks an event.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio
from anyio.abc import TaskGroup

from worker.db.outbox import Batch, ClaimChain, Outbox
from worker.driver_errors import CONFLICT_PAUSE
from worker.errors import Conflict, DatabaseUnavailable, Outage, StreamUnavailable
from worker.events import Event, ai_monitoring_request_for, notification_for, stream_fields
from worker.logs import lines_held
from worker.metrics import Metrics
from worker.pipeline.claim_schedule import ClaimSchedule
from worker.pipeline.handlers import Registry
from worker.pipeline.handling import HandlerRunner, parsed
from worker.pipeline.outages import DISPATCHER, OutageState
from worker.pipeline.streams import Publication, StreamPublisher
from worker.settings import PipelineSettings, StreamSettings


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
        self.outbox, self.publisher = outbox, publisher
        self.cfg, self.streams, self.metrics, self.log = pipeline, streams, metrics, log
        self.schedule = ClaimSchedule.for_pipeline(pipeline)
        self.handling = HandlerRunner(handlers, pipeline, metrics=metrics, log=log)
        self.processed = 0
        self.chained = 0  # claims sent with the commit of the batch before them
        self._wake = anyio.Event()
        # set when a batch of this process commits what another claim may take now, when a
        # new position comes in, or at a stop
        self._released = anyio.Event()
        self.stopped = anyio.Event()
        # told when polling starts (True) and ends (False): the listener pauses and resumes
        self.on_polling: Callable[[bool], None] = lambda polling: None

    @property
    def polling(self) -> bool:
        """Claiming every ``linger_seconds`` on its own, wake-ups paused."""
        return self.schedule.polling

    @property
    def failures_in_a_row(self) -> int:
        """Infrastructure failures since the last batch that committed (the backoff's
        attempt number; a claim that succeeds and then fails to publish does not reset it)."""
        return self.schedule.failures

    @property
    def outages(self) -> dict[str, OutageState]:
        """The outages being waited out, by target (``database``, ``redis``)."""
        return self.handling.outages.by_target

    def wake(self) -> None:
        """A notification arrived: counted, and the waiters are signalled only when the
        schedule says so (most notifications of a steady stream need no task switch)."""
        if self.schedule.woken():
            self._signal()

    def new_position(self) -> None:
        """A notification of a new position: its first event is no claim's yet, so a
        drainer paused with nothing to take claims again once its least pause is over
        (see :meth:`_wait_busy`)."""
        if self.schedule.busy.count:
            self._release()

    def stop(self) -> None:
        """Stop claiming; the batch in hand is finished first."""
        self.schedule.stopping = True
        self._signal()
        self._release()

    def _signal(self) -> None:
        """Wake whoever waits now (the serve loop, a paused or lingering drainer). The event
        is swapped before it is set, so a drainer that signals and then waits is not woken
        by its own signal. Waiters re-check the schedule, never the event."""
        event, self._wake = self._wake, anyio.Event()
        event.set()

    def _release(self) -> None:
        """Wake the drainers paused with nothing to take (:meth:`_wait_busy`): a claim of
        this process ended, or a new position came in. Swapped before it is set as
        :meth:`_signal` does."""
        event, self._released = self._released, anyio.Event()
        event.set()

    async def run(self) -> None:
        try:
            while not self.schedule.stopping:
                try:
                    async with anyio.create_task_group() as tg:
                        await self._serve(tg)
                except* (DatabaseUnavailable, StreamUnavailable) as group:
                    exc = group.exceptions[0]
                    while isinstance(exc, ExceptionGroup):  # from a nested task group
                        exc = exc.exceptions[0]
                    await self._back_off(exc)
                except* Conflict as group:
                    await self._conflicted(group.exceptions[0])
        finally:
            self.stopped.set()

    async def _conflicted(self, exc: BaseException) -> None:
        """A claim or settlement PostgreSQL rolled back for a conflict: its events stay
        pending and the next claim takes them; the database answers, so this is no outage."""
        self.log.warning("claim_conflict", error=str(exc))
        await anyio.sleep(CONFLICT_PAUSE)

    async def _back_off(self, exc: Outage) -> None:
        failure = self.schedule.failed()
        if failure.polling_switched:  # nobody claims while backing off
            self._polling_switched()
        self.handling.outage_met(exc, DISPATCHER)
        self.metrics.reconnects.labels(exc.target).inc()
        self.log.warning(
            "dispatcher_backing_off",
            target=exc.target,
            error=str(exc),
            attempt=failure.attempt,
            delay_seconds=round(failure.delay, 3),
        )
        with anyio.move_on_after(failure.delay):
            while not self.schedule.stopping:
                await self._wake.wait()

    async def _serve(self, tg: TaskGroup) -> None:
        """Start drainers when the schedule says so (wake-ups, the periodic full claim)."""
        self.schedule.restarted(time.monotonic())
        while not self.schedule.stopping:
            now = time.monotonic()
            step = self.schedule.serve(now)
            if step.start_drainer:
                tg.start_soon(self._drain_one, tg)
            with anyio.move_on_after(step.wait_until - now):
                await self._wake.wait()

    async def _drain_one(self, tg: TaskGroup) -> None:
        pause = 0.0
        try:
            while not self.schedule.stopping:
                batch, full, claim_seconds = await self._drain_chain(tg)
                # a batch went all the way (not just its claim); one that claimed nothing
                # released nothing
                self._committed(released=batch.claimed > 0)
                if self.schedule.drainers > 1 and not batch.busy:
                    self._signal()  # committed: a claim held back behind ours may go now
                if batch.busy:  # every pending event is another claim's (or follows one)
                    pause = self.schedule.busy_pause_after(pause, claim_seconds)
                    await self._wait_busy(pause, self.schedule.busy_least(claim_seconds))
                    continue
                if batch.retry_soon:  # a position's earlier event is held by another claim
                    pause = self.schedule.pause_after(pause)
                    with self.schedule.pausing.waiting(), anyio.move_on_after(pause):
                        await self._wake.wait()
                    continue
                pause = 0.0
                if not self.schedule.drain_on(full=full):
                    break
                if not full:
                    await self._linger()
        finally:
            self.schedule.drainer_left()
            self._signal()  # the serve loop looks again (a wake-up may be uncovered)

    async def _wait_busy(self, pause: float, least: float) -> None:
        """A drainer whose claim found nothing it may take waits ``pause`` seconds, or until
        a batch of this process releases events another claim may take (see _committed)
        or a new position comes in (:meth:`new_position`), but not before ``least``
        seconds (what that claim cost, paced: a release by the process's own chain seldom
        leaves it anything; ``pause`` is never shorter, see ClaimSchedule.busy_pause_after).
        Other notifications do not end the wait: they are of events another claim will
        take. A stop does."""
        start, released = time.monotonic(), False
        with self.schedule.busy.waiting():
            while not self.schedule.stopping:
                left = start + (least if released else pause) - time.monotonic()
                if left <= 0:
                    return
                with anyio.move_on_after(left):
                    await self._released.wait()
                    released = True

    async def _drain_chain(self, tg: TaskGroup) -> tuple[Batch, bool, float]:
        """Claim and process batches on one connection for as long as the next claim is due
        the moment a batch is done; each claim commits the batch before it in the same round
        trip (see :class:`worker.db.outbox.ClaimChain`). Returns the last batch, committed,
        whether it was full, and how long its claim took."""
        async with self.outbox.chain() as chain:
            while True:
                batch, full, claim_seconds = await self._claim(chain, tg)
                await self._process(batch)
                full = full or batch.left > 0  # positions went back: claim again at once
                now = time.monotonic()
                wait = batch.retry_soon or batch.busy
                if not self.schedule.chain_next(now, full=full, retry_soon=wait):
                    return batch, full, claim_seconds

    async def _claim(self, chain: ClaimChain, tg: TaskGroup) -> tuple[Batch, bool, float]:
        start = self.schedule.claim_starting(time.monotonic())
        chained = chain.open is not None
        try:
            batch = await chain.claim(self.cfg.batch_size, start.floor)
        except BaseException:
            self.schedule.claim_failed()
            raise
        now = time.monotonic()
        after = self.schedule.claimed(
            start,
            now,
            found=len(batch.rows),
            claimed=batch.claimed,
            min_pending=batch.min_pending,
            newest=batch.newest,
            behind_floor=batch.behind_floor,
            chained=chained,
            heads=batch.heads,
        )
        if chained:  # the batch before it committed; unless first events of positions
            # alone filled this claim, it took every one it saw of what that released, and
            # a drainer paused with nothing to take would find nothing (docs/benchmarks.md)
            self._committed(released=after.heads_left)
            self.chained += 1
        if after.signal:
            self._signal()
        if after.polling_switched:
            self._polling_switched()
        if after.add_drainer:
            tg.start_soon(self._drain_one, tg)  # claims the next batch while this one runs
        return batch, after.full, now - start.started

    def _committed(self, *, released: bool = True) -> None:
        """A batch committed: the dispatcher's backoff starts over, and an outage that only
        the dispatcher met is over. ``released``: what it held leaves events that another
        claim may take now (their positions' next ones): the drainers paused with nothing
        to take claim again."""
        self.schedule.committed()
        if released:
            self._release()
        if self.outages:
            self.handling.succeeded(DISPATCHER)

    def _polling_switched(self) -> None:
        on = self.schedule.polling
        self.metrics.wakeups_paused.set(1 if on else 0)
        self.on_polling(on)

    async def _linger(self) -> None:
        """Wait until the next claim may go (a wake-up does not cut it short; a stop does)."""
        with self.schedule.lingering.waiting():
            while (left := self.schedule.linger_left(time.monotonic())) > 0:
                with anyio.move_on_after(left):
                    await self._wake.wait()

    async def _process(self, batch: Batch) -> int:
        items = parsed(batch.rows)
        events = [item for item in items if isinstance(item, Event)]
        if events:  # StreamUnavailable: the claim rolls back, the events go back
            await self._publish(events)
        with lines_held():  # the batch's audit lines in one write
            handled = await self.handling.run(batch, items)
        self.processed += handled
        return handled

    async def _publish(self, events: Sequence[Event]) -> None:
        """Publish the events; commit-to-stream is observed once per event, when its entry
        is appended to the events stream (an event a claim left and the next one claims
        again is deduplicated then, not observed twice)."""
        pubs = [pub for event in events for pub in self.publications(event)]
        started = time.perf_counter()
        appended = await self.publisher.publish(pubs)
        self.metrics.publish_latency.observe(time.perf_counter() - started)
        now = datetime.now(UTC)
        first = {pub.event_id for pub, new in zip(pubs, appended, strict=True) if new}
        self.metrics.commit_to_stream.observe_many(
            [(now - e.occurred_at).total_seconds() for e in events if e.event_id in first]
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
