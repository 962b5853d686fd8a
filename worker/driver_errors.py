"""The one place that knows the drivers' exceptions (psycopg, psycopg_pool, redis) and turns
them into the project's own (:mod:`worker.errors`): which of them mean that a server is
unavailable (an :class:`~worker.errors.Outage`), which are an event's own failure.

Two questions get two answers:

* the worker's own work (claims and their settlement, publishing, the heartbeat, the lag
  sample, the engine's watcher): :func:`translated_errors` (PostgreSQL) and
  :func:`translated_redis_errors` raise an Outage for any connection-level failure, since
  no event is to blame, and :func:`translated_errors` a :class:`~worker.errors.Conflict`
  for a transaction PostgreSQL rolled back (a deadlock, a serialization failure), which
  :func:`conflicts_retried` runs again;
* an exception that escaped a handler: :func:`outage_of` says whether it is an outage
  (deferred without counting an attempt) or the event's own failure (counted toward
  ``max_attempts``). A statement timeout or a deadlock there is the event's.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final, TypeVar

import anyio
import psycopg
import redis.exceptions

from worker.errors import Conflict, DatabaseUnavailable, Outage, StreamUnavailable

T = TypeVar("T")

# -- the worker's own statements and commands ---------------------------------------------
# PostgreSQL: every OperationalError (connection refused, lost or closed, the pool's
# PoolTimeout, an administrator's shutdown), and a claim's session ended after lease_seconds
# idle in its transaction.
_PG_UNAVAILABLE: Final = (
    psycopg.OperationalError,
    psycopg.errors.IdleInTransactionSessionTimeout,
)
# Redis: unreachable, dropped, timed out, loading; a cluster that is down, keeps redirecting,
# has no node reachable or a slot not covered. (A command refused by a server that answers,
# ResponseError, is translated too: see translated_redis_errors.)
_REDIS_UNAVAILABLE: Final = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
    redis.exceptions.ClusterError,
    redis.exceptions.RedisClusterException,
)

# PostgreSQL rolls a transaction back to settle a conflict with a concurrent one: class 40,
# transaction rollback (40001 serialization_failure, 40P01 deadlock_detected, ...). The
# manual ("Serialization Failure Handling") advises running the whole transaction again,
# deadlocks included. psycopg raises them as OperationalErrors, so they are told apart here.
_PG_CONFLICT_CLASS: Final = "40"
# How often conflicts_retried runs a transaction, and its first pause (doubled each time,
# with jitter, so the two sides of a deadlock do not meet again in step).
CONFLICT_ATTEMPTS: Final = 4
CONFLICT_PAUSE: Final = 0.01

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


@asynccontextmanager
async def translated_errors() -> AsyncIterator[None]:
    """Turn connection-level PostgreSQL driver errors into DatabaseUnavailable, and a
    transaction PostgreSQL rolled back for a conflict (class 40) into Conflict."""
    try:
        yield
    except _PG_UNAVAILABLE as exc:
        if _conflict(exc):
            raise Conflict(_described(exc)) from exc
        raise DatabaseUnavailable(str(exc).strip() or type(exc).__name__) from exc


def _conflict(exc: BaseException) -> bool:
    state = exc.sqlstate if isinstance(exc, psycopg.Error) else None
    return state is not None and state[:2] == _PG_CONFLICT_CLASS


async def conflicts_retried(
    transaction: Callable[[], Awaitable[T]],
    on_retry: Callable[[Conflict, int], None],
    attempts: int = CONFLICT_ATTEMPTS,
) -> T:
    """Run ``transaction`` (one whole transaction, its errors translated) again each time it
    raises :class:`Conflict`, up to ``attempts`` runs with growing pauses; ``on_retry`` is
    told of each conflict that is retried (error, the attempt that met it). The last
    attempt's Conflict is raised."""
    for attempt in range(1, attempts):
        try:
            return await transaction()
        except Conflict as exc:
            on_retry(exc, attempt)
        pause = CONFLICT_PAUSE * 2 ** (attempt - 1)
        await anyio.sleep(pause * (0.5 + random.random()))  # jitter
    return await transaction()


@asynccontextmanager
async def translated_redis_errors(command: str) -> AsyncIterator[None]:
    """Turn Redis driver errors into StreamUnavailable: an unreachable server, or one that
    refuses ``command`` (a key of the wrong type, a read-only replica, no permission)."""
    try:
        yield
    except _REDIS_UNAVAILABLE as exc:
        raise StreamUnavailable(f"Redis unavailable: {exc}") from exc
    except redis.exceptions.ResponseError as exc:
        raise StreamUnavailable(f"Redis refused the {command}: {exc}") from exc


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
