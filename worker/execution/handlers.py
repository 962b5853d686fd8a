"""The engine's entry points in the event pipeline.

A handler that finds the position busy (another actor holds it) waits for it a little;
if it stays busy the pipeline retries the event with backoff like any failure. Exchange
trouble defers the event (RetryLater). Database and Redis trouble (the engine's psycopg
errors, its pool's timeouts) propagates as it is: the dispatcher classifies it as an outage
(``worker.driver_errors.outage_of``) and defers the event without counting an
attempt, so a trade waits out a PostgreSQL restart instead of being parked as dead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio

from worker.errors import RetryLater
from worker.events import Event
from worker.exchanges.base import ExchangeError, RateLimited
from worker.execution.context import PositionBusy
from worker.execution.engine import Engine
from worker.pipeline.handlers import Registry

BUSY_WAIT_SECONDS = 15.0


def position_created(event: Event) -> bool:
    return event.kind == "position" and event.old_status is None


def request_recorded(event: Event) -> bool:
    return event.kind == "request"


EXCHANGE_RETRY_SECONDS = 2.0


async def _patiently(action: Any, *args: Any) -> None:
    """Wait a little for a busy position; exchange trouble (a ban, an unknown outcome, an
    outage) defers the event without counting it as a failure."""
    try:
        with anyio.fail_after(BUSY_WAIT_SECONDS):
            while True:
                try:
                    await action(*args)
                    return
                except PositionBusy:
                    await anyio.sleep(0.05)
    except ExchangeError as exc:
        raise _deferred(exc) from exc


def _deferred(exc: ExchangeError) -> RetryLater:
    """Exchange trouble as the event's deferral: a rate limit by the delay it names."""
    if isinstance(exc, RateLimited):
        return RetryLater(max(exc.retry_after_s, 1.0), f"exchange rate limit: {exc}")
    return RetryLater(EXCHANGE_RETRY_SECONDS, f"exchange unavailable: {exc}")


def _as_result(result: Exception | None) -> Exception | None:
    """One entry's result of a batch, as :func:`_patiently` would have raised it."""
    if isinstance(result, ExchangeError):
        deferred = _deferred(result)
        deferred.__cause__ = result
        return deferred
    return result


def add_execution_handlers(registry: Registry, engine: Engine) -> None:
    async def enter(event: Event) -> None:
        await _patiently(engine.enter, event.position_id)

    async def enter_many(events: Sequence[Event]) -> dict[int, Exception | None]:
        """Many entries at once (Engine.enter_many); a position held elsewhere gets no
        result here: its event waits for it one by one."""
        results = await engine.enter_many([event.position_id for event in events])
        return {
            event.event_id: _as_result(results[event.position_id])
            for event in events
            if event.position_id in results
        }

    async def request(event: Event) -> None:
        await _patiently(engine.handle_request, event.position_id, str(event.data["request_id"]))

    async def request_many(events: Sequence[Event]) -> dict[int, Exception | None]:
        """Many requests at once (Engine.handle_requests), as :func:`enter_many`."""
        pairs = [(event.position_id, str(event.data["request_id"])) for event in events]
        results = await engine.handle_requests(pairs)
        return {
            event.event_id: _as_result(results[event.position_id])
            for event in events
            if event.position_id in results
        }

    registry.add("execution_entry", position_created, enter, slow=True, batch=enter_many)
    registry.add("execution_request", request_recorded, request, slow=True, batch=request_many)
