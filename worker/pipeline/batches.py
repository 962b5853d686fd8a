"""Handlers that take many events at once (``Handler.batch``, e.g. a thousand entries of
one signal): which of a claimed batch's events each gets, and their results, kept for each
event's turn (worker/pipeline/handling.py).

An event goes to a batch handler only when it is the first of its position's events in the
claim (nothing of its position is waiting to be handled before it) and its user has fewer
than ``per_user`` events in that handler's batch already, so one user's flood cannot make
the batch long for everyone else: their other events take their turns as usual. A batch
call that raises gives no results: its events are then handled one by one, which meets the
same failure (an outage is waited out, an error retried) event by event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.events import Event
from worker.pipeline.handlers import Handler, Registry
from worker.pipeline.turns import Run

# (handler name, event id) -> that event's result: None, or what handling it raised
Prepared = dict[tuple[str, int], Exception | None]


def batchable(handler: Handler, runs: Sequence[Run[Any]], per_user: int) -> list[Event]:
    """The events ``handler`` takes at once. Pure."""
    taken: dict[str, int] = {}
    events: list[Event] = []
    for run in runs:
        first = run.items[0]
        if not isinstance(first, Event) or not handler.matches(first):
            continue
        if per_user and taken.get(run.user_id, 0) >= per_user:
            continue
        taken[run.user_id] = taken.get(run.user_id, 0) + 1
        events.append(first)
    return events


async def prepare(
    handlers: Registry, runs: Sequence[Run[Any]], per_user: int, log: Any
) -> Prepared:
    """Run every batch handler over its events (two or more); their results."""
    prepared: Prepared = {}
    for handler in handlers.handlers:
        if handler.batch is None:
            continue
        events = batchable(handler, runs, per_user)
        if len(events) < 2:
            continue
        try:
            results = await handler.batch(events)
        except Exception as exc:
            log.warning(
                "batch_handler_failed", handler=handler.name, events=len(events), error=str(exc)
            )
            continue
        for event_id, result in results.items():
            prepared[(handler.name, event_id)] = result
    return prepared
