"""Outages are waited out, not dead-lettered: what a handler's exception says about the
servers (worker.driver_errors.outage_of, pure), and what the dispatcher does with it
(a batch that records its settlements instead of a database)."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import anyio
import psycopg
import psycopg.errors as pe
import pytest
import redis.exceptions as re
import structlog
from psycopg_pool import PoolClosed, PoolTimeout, TooManyRequests

from worker.db.outbox import Batch, FailResult
from worker.driver_errors import outage_of
from worker.errors import (
    Conflict,
    DatabaseUnavailable,
    RetryLater,
    StreamUnavailable,
    WorkerError,
)
from worker.events import Event
from worker.metrics import Metrics
from worker.pipeline.dispatcher import Dispatcher
from worker.pipeline.handlers import Registry
from worker.pipeline.outages import DISPATCHER
from worker.settings import PipelineSettings, StreamSettings

pytestmark = pytest.mark.anyio

DATABASE_OUTAGES = [
    psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"),
    psycopg.OperationalError("the connection is closed"),
    pe.ConnectionFailure("connection failure"),
    pe.AdminShutdown("terminating connection due to administrator command"),
    pe.CrashShutdown("terminating connection because of crash of another server process"),
    pe.CannotConnectNow("the database system is starting up"),
    pe.IdleSessionTimeout("terminating connection due to idle-session timeout"),
    pe.TooManyConnections("sorry, too many clients already"),
    pe.DiskFull("could not extend file"),
    pe.IoError("could not read block"),
    pe.IdleInTransactionSessionTimeout("terminating connection due to idle-in-transaction"),
    pe.ReadOnlySqlTransaction("cannot execute UPDATE in a read-only transaction"),
    PoolTimeout("couldn't get a connection after 10.00 sec"),
    TooManyRequests("the pool has already 5 requests waiting"),
    PoolClosed("the pool is closed"),
    DatabaseUnavailable("no database connection available"),
]
REDIS_OUTAGES = [
    re.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
    re.TimeoutError("Timeout reading from socket"),
    re.BusyLoadingError("Redis is loading the dataset in memory"),
    re.ClusterDownError("CLUSTERDOWN The cluster is down"),
    re.ReadOnlyError("You can't write against a read only replica."),
    StreamUnavailable("Redis unavailable"),
]
EVENT_ERRORS = [
    pe.QueryCanceled("canceling statement due to statement timeout"),
    pe.SerializationFailure("could not serialize access"),
    pe.DeadlockDetected("deadlock detected"),
    Conflict("DeadlockDetected: deadlock detected"),  # translated_errors' own
    pe.LockNotAvailable("could not obtain lock"),
    pe.StatementTooComplex("stack depth limit exceeded"),
    pe.UniqueViolation("duplicate key value"),
    pe.CheckViolation("new row violates check constraint"),
    pe.RaiseException("PW012 wrong state"),
    psycopg.ProgrammingError("syntax error"),
    psycopg.InterfaceError("bad use of the driver"),
    re.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    RuntimeError("downstream is broken"),
    KeyError("request_id"),
    TimeoutError(),  # the handler's own deadline (a busy position), not a server's
    ConnectionRefusedError("an exchange socket"),  # exchange trouble arrives as ExchangeError
    WorkerError("position 1 does not exist"),
]


@pytest.mark.parametrize("exc", DATABASE_OUTAGES, ids=lambda e: type(e).__name__)
def test_database_unavailability_is_an_outage_of_the_database(exc: Exception) -> None:
    outage = outage_of(exc)
    assert isinstance(outage, DatabaseUnavailable)
    assert outage.target == "database"
    assert type(exc).__name__ in str(outage) or outage is exc


@pytest.mark.parametrize("exc", REDIS_OUTAGES, ids=lambda e: type(e).__name__)
def test_redis_unavailability_is_an_outage_of_redis(exc: Exception) -> None:
    outage = outage_of(exc)
    assert isinstance(outage, StreamUnavailable)
    assert outage.target == "redis"


@pytest.mark.parametrize("exc", EVENT_ERRORS, ids=lambda e: type(e).__name__)
def test_errors_of_the_event_itself_are_no_outage(exc: Exception) -> None:
    assert outage_of(exc) is None


def test_an_outage_reports_the_driver_error_on_one_line() -> None:
    exc = psycopg.OperationalError("server closed the connection unexpectedly\n\tThis probably")
    assert str(outage_of(exc)) == (
        "OperationalError: server closed the connection unexpectedly This probably"
    )


def test_an_error_raised_from_or_while_handling_an_outage_is_that_outage() -> None:
    try:
        try:
            raise pe.AdminShutdown("terminating connection due to administrator command")
        except psycopg.Error:
            # the engine's unlock, on the connection the statement before it lost
            raise psycopg.OperationalError("the connection is closed") from None
    except psycopg.Error as exc:
        assert isinstance(outage_of(exc), DatabaseUnavailable)
    try:
        try:
            raise re.ConnectionError("Connection reset by peer")
        except re.RedisError:
            raise RuntimeError("could not notify")  # noqa: B904 (implicit chaining on purpose)
    except RuntimeError as exc:
        assert isinstance(outage_of(exc), StreamUnavailable)
    wrapped = WorkerError("recording failed")
    wrapped.__cause__ = PoolTimeout("couldn't get a connection")
    assert isinstance(outage_of(wrapped), DatabaseUnavailable)


def test_a_suppressed_context_is_not_looked_at() -> None:
    try:
        try:
            raise pe.AdminShutdown("terminating connection")
        except psycopg.Error:
            raise ValueError("bad amount") from None
    except ValueError as exc:
        assert outage_of(exc) is None


def test_an_exception_group_is_an_outage_when_one_of_its_members_is() -> None:
    group = ExceptionGroup("handlers", [ValueError("x"), ExceptionGroup("inner", [PoolTimeout()])])
    assert isinstance(outage_of(group), DatabaseUnavailable)
    assert outage_of(ExceptionGroup("handlers", [ValueError("x"), KeyError("y")])) is None


def test_a_cycle_in_the_chain_ends() -> None:
    a, b = ValueError("a"), KeyError("b")
    a.__context__, b.__context__ = b, a
    assert outage_of(a) is None


# -- the dispatcher: deferred without an attempt, logged once per outage --------------------


@dataclass
class RecordingBatch:
    """What the dispatcher asks of a claimed batch, recorded."""

    done: list[int] = field(default_factory=list)
    deferred: list[tuple[int, float, str]] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    attempts: dict[int, int] = field(default_factory=dict)

    async def handled(self, event_id: int) -> None:
        self.done.append(event_id)

    async def defer(self, event_id: int, delay: float, reason: str) -> None:
        self.deferred.append((event_id, delay, reason))

    async def mark_failed(
        self, event_id: int, error: str, delay: float, max_attempts: int
    ) -> FailResult:
        self.failed.append(event_id)
        self.attempts[event_id] = self.attempts.get(event_id, 0) + 1
        return FailResult(self.attempts[event_id], self.attempts[event_id] >= max_attempts)

    async def mark_dead(self, event_id: int, error: str) -> None:
        raise AssertionError("nothing here is unreadable")


@dataclass
class RecordingLog:
    lines: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def _at(self, level: str) -> Any:
        def write(event: str, **fields: Any) -> None:
            self.lines.append((level, event, fields))

        return write

    def __getattr__(self, level: str) -> Any:
        return self._at(level)

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for _, name, fields in self.lines if name == event]

    def at_or_above_info(self) -> list[str]:
        return [name for level, name, _ in self.lines if level != "debug"]


class Flaky:
    """A handler that raises each of ``errors`` in turn, then succeeds."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self, event: Event) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


def make_dispatcher(
    handler: Flaky, *, max_attempts: int = 2, audit: Flaky | None = None
) -> tuple[Dispatcher, RecordingLog, Metrics]:
    registry = Registry()
    registry.add("audit_log", lambda e: True, audit or Flaky())
    registry.add("execution_entry", lambda e: True, handler)
    log, metrics = RecordingLog(), Metrics()
    pipeline = PipelineSettings(max_attempts=max_attempts, reconnect_max_seconds=0.4)
    dispatcher = Dispatcher(
        cast(Any, None),
        cast(Any, None),
        registry,
        pipeline=pipeline,
        streams=StreamSettings(),
        metrics=metrics,
        log=log,
    )
    return dispatcher, log, metrics


def event(event_id: int, position: str = "p1") -> Event:
    return Event(event_id, "position", position, "u1", "BTCUSDT", datetime.now(UTC))


def sample(metrics: Metrics, name: str, target: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"target": target})


async def run(dispatcher: Dispatcher, batch: RecordingBatch, *events: Event) -> int:
    return await dispatcher.handling.run(cast(Batch, batch), list(events))


async def test_an_outage_defers_without_an_attempt_however_long_it_lasts() -> None:
    """Five outage errors in a row with max_attempts 2: never marked failed, never dead."""
    outages = [PoolTimeout("couldn't get a connection"), pe.AdminShutdown("terminating")] * 3
    handler = Flaky(*outages[:5])
    dispatcher, log, metrics = make_dispatcher(handler)
    batch = RecordingBatch()
    for _ in range(5):
        assert await run(dispatcher, batch, event(1)) == 0
        dispatcher.outages["database"].retry_at = 0.0  # its backoff ran out
    assert await run(dispatcher, batch, event(1)) == 1
    assert handler.calls == 6
    assert batch.failed == [] and batch.done == [1]
    assert [d[0] for d in batch.deferred] == [1] * 5
    assert all(
        reason.startswith("execution_entry: database unavailable: ")
        for *_, reason in batch.deferred
    )
    assert all(0 <= delay <= 0.4 for _, delay, _ in batch.deferred)
    # logged once when it began, once when it was over; each deferral at debug level only
    assert [n for n in log.at_or_above_info() if "outage" in n] == ["outage_started", "outage_over"]
    [started] = log.named("outage_started")
    assert (started["target"], started["met_by"], started["event_id"]) == (
        "database",
        "execution_entry",
        1,
    )
    [over] = log.named("outage_over")
    assert (over["deferred"], over["failed_calls"]) == (5, 5)
    assert len(log.named("event_waiting_out_outage")) == 5
    assert not log.named("handler_failed") and not log.named("event_dead")
    assert sample(metrics, "position_worker_outage_deferrals_total", "database") == 5
    assert sample(metrics, "position_worker_outage", "database") == 0
    assert metrics.registry.get_sample_value("position_worker_events_dead_total") == 0
    assert dispatcher.outages == {}


async def test_until_the_backoff_runs_out_other_events_wait_without_a_call() -> None:
    handler, audit = Flaky(PoolTimeout("couldn't get a connection")), Flaky()
    dispatcher, log, metrics = make_dispatcher(handler, audit=audit)
    batch = RecordingBatch()
    events = [event(1, "p1"), event(2, "p2"), event(3, "p3")]
    assert await run(dispatcher, batch, *events) == 0
    assert handler.calls == 1  # the first one met the outage; the others were not tried,
    assert audit.calls == 1  # nor any handler before it
    assert [d[0] for d in batch.deferred] == [1, 2, 3]
    assert [fields["called"] for fields in log.named("event_waiting_out_outage")] == [
        True,
        False,
        False,
    ]
    assert sample(metrics, "position_worker_outage", "database") == 1
    dispatcher.outages["database"].retry_at = 0.0
    assert await run(dispatcher, batch, *events) == 3
    assert handler.calls == 4 and audit.calls == 4 and batch.failed == []
    assert sample(metrics, "position_worker_outage", "database") == 0


async def test_the_backoff_grows_with_each_failed_call_up_to_its_cap() -> None:
    handler = Flaky(*[re.ConnectionError("Connection refused")] * 8)
    dispatcher, _, _ = make_dispatcher(handler)
    batch = RecordingBatch()
    for _ in range(8):
        await run(dispatcher, batch, event(1))
        dispatcher.outages["redis"].retry_at = 0.0
    delays = [delay for _, delay, _ in batch.deferred]
    # retry_delay(n, 0.1, 0.4): between half and all of min(0.4, 0.1 * 2 ** (n - 1))
    ceilings = [min(0.4, 0.1 * 2 ** (n - 1)) for n in range(1, 9)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert max(delays) <= 0.4


async def test_an_error_of_the_event_still_counts_and_parks_it() -> None:
    handler = Flaky(RuntimeError("bad"), pe.UniqueViolation("duplicate key"))
    dispatcher, log, _ = make_dispatcher(handler, max_attempts=2)
    batch = RecordingBatch()
    await run(dispatcher, batch, event(1))
    await run(dispatcher, batch, event(1))
    assert batch.failed == [1, 1] and batch.deferred == []
    assert len(log.named("event_dead")) == 1
    assert not log.named("outage_started")


async def test_a_handler_failure_is_logged_with_its_traceback() -> None:
    """handler_failed and event_dead carry the exception; the JSON chain renders it as a
    traceback (structlog's format_exc_info, as worker.logs configures it)."""
    out = io.StringIO()
    log = structlog.wrap_logger(
        structlog.WriteLogger(out),
        processors=[structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.BoundLogger,  # whatever level an earlier test configured
    )
    handler = Flaky(RuntimeError("bad"), RuntimeError("worse"))
    dispatcher, _, _ = make_dispatcher(handler, max_attempts=2)
    dispatcher.handling.log = log
    batch = RecordingBatch()
    await run(dispatcher, batch, event(1))
    await run(dispatcher, batch, event(1))
    failed, dead = [json.loads(line) for line in out.getvalue().splitlines()]
    assert failed["event"] == "handler_failed" and dead["event"] == "event_dead"
    for line, message in ((failed, "RuntimeError: bad"), (dead, "RuntimeError: worse")):
        assert line["exception"].startswith("Traceback (most recent call last):")
        assert line["exception"].rstrip().endswith(message)
        assert "in __call__" in line["exception"]  # the handler's own frame


async def test_retry_later_is_deferred_by_its_own_delay_and_is_no_outage() -> None:
    handler = Flaky(RetryLater(2.0, "exchange rate limit"))
    dispatcher, log, _ = make_dispatcher(handler)
    batch = RecordingBatch()
    await run(dispatcher, batch, event(1))
    assert batch.deferred == [(1, 2.0, "execution_entry: exchange rate limit")]
    assert dispatcher.outages == {} and log.named("event_deferred")


async def test_a_position_waiting_out_an_outage_holds_back_its_later_events() -> None:
    handler = Flaky(PoolTimeout("couldn't get a connection"))
    dispatcher, _, _ = make_dispatcher(handler)
    batch = RecordingBatch()
    assert await run(dispatcher, batch, event(1, "p1"), event(2, "p1")) == 0
    assert [d[0] for d in batch.deferred] == [1]  # event 2 stays pending, untouched


async def test_an_outage_only_the_dispatcher_met_is_over_when_a_batch_commits() -> None:
    dispatcher, log, metrics = make_dispatcher(Flaky())
    dispatcher.handling.outage_met(DatabaseUnavailable("connection refused"), DISPATCHER)
    dispatcher.handling.outage_met(DatabaseUnavailable("connection refused"), DISPATCHER)
    assert len(log.named("outage_started")) == 1
    assert sample(metrics, "position_worker_outage", "database") == 1
    dispatcher._committed()
    assert dispatcher.outages == {} and len(log.named("outage_over")) == 1
    assert sample(metrics, "position_worker_outage", "database") == 0


async def test_an_outage_a_handler_met_ends_with_that_handler_not_with_a_commit() -> None:
    """The claims use their own pool: a batch that commits says nothing about the engine's
    connections, so only the handler's next success ends the outage."""
    handler = Flaky(PoolTimeout("couldn't get a connection"))
    dispatcher, log, _ = make_dispatcher(handler)
    batch = RecordingBatch()
    await run(dispatcher, batch, event(1))
    dispatcher.handling.outage_met(DatabaseUnavailable("connection refused"), DISPATCHER)
    dispatcher._committed()
    assert "database" in dispatcher.outages and not log.named("outage_over")
    dispatcher.outages["database"].retry_at = 0.0
    await run(dispatcher, batch, event(1))
    assert dispatcher.outages == {} and len(log.named("outage_over")) == 1


async def test_outages_of_the_database_and_of_redis_are_apart() -> None:
    handler = Flaky(PoolTimeout("couldn't get a connection"), re.TimeoutError("timed out"))
    dispatcher, log, _ = make_dispatcher(handler)
    batch = RecordingBatch()
    await run(dispatcher, batch, event(1))
    dispatcher.outages["database"].retry_at = 0.0
    await run(dispatcher, batch, event(1))
    assert sorted(dispatcher.outages) == ["database", "redis"]
    assert [f["target"] for f in log.named("outage_started")] == ["database", "redis"]
    dispatcher.outages["redis"].retry_at = 0.0
    await run(dispatcher, batch, event(1))
    assert dispatcher.outages == {} and len(log.named("outage_over")) == 2


class ConflictingOutbox:
    """Every claim chain is rolled back for a conflict; the third one asks the dispatcher
    to stop."""

    def __init__(self) -> None:
        self.chains = 0
        self.dispatcher: Dispatcher | None = None

    @asynccontextmanager
    async def chain(self) -> AsyncIterator[Any]:
        self.chains += 1
        if self.chains >= 3 and self.dispatcher is not None:
            self.dispatcher.stop()
        raise Conflict("DeadlockDetected: deadlock detected")
        yield  # pragma: no cover


async def test_a_claim_rolled_back_for_a_conflict_is_claimed_again_and_is_no_outage() -> None:
    """The database answers: the dispatcher claims again at once, with no back-off, no
    outage logged or shown, and it keeps running."""
    dispatcher, log, metrics = make_dispatcher(Flaky())
    outbox = ConflictingOutbox()
    outbox.dispatcher = dispatcher
    dispatcher.outbox = cast(Any, outbox)
    with anyio.fail_after(5):
        await dispatcher.run()
    assert outbox.chains >= 3  # claimed again after a conflict, and again
    # once per failed round of claims (drainers that failed together: one line)
    assert 1 <= len(log.named("claim_conflict")) <= outbox.chains
    assert "deadlock detected" in log.named("claim_conflict")[0]["error"]
    assert not log.named("outage_started") and not log.named("dispatcher_backing_off")
    assert sample(metrics, "position_worker_reconnects_total", "database") in (None, 0)
