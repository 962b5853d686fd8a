"""Handlers that take many events at once (``Handler.batch``, e.g. a thousand entries of
one signal): which of a claimed batch's events each gets, and their results, kept for each
event's turn (worker/pipeline/handling.py).

An event goes to a batch handler only when it is the first of its position's events in the
claim (nothing of its position is waiting to be handled before it) and its user has fewer
than ``per_user`` events in that handler's batch already, so one user's flood cannot make
the batch long for everyone else. The user's other positions whose first event the handler
matched are left for the next claim, which follows at once and takes them in turn with
everyone else's: a flood goes through in batches of ``per_user``, and another user's entry
waits for one short batch, not for the flood. A batch call that raises gives no results
and leaves nothing: its events are then handled one by one, which meets the same failure
(an outage is waited out, an error retried) event by event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.events import Event
from worker.pipeline.handlers import Handler, Registry
from worker.pipeline.turns import Run

# (handler name, event id) -> that event's result: None, or what handling it raised
Prepared = dict[tuple[str, int], Exception | None]


def batchable(
    handler: Handler, runs: Sequence[Run[Any]], per_user: int
) -> tuple[list[Event], list[str]]:
    """The events ``handler`` takes at once, and the positions of those it matched beyond
    their user's ``per_user`` (left for the next claim). Pure."""
    taken: dict[str, int] = {}
    events: list[Event] = []
    beyond: list[str] = []
    for run in runs:
        first = run.items[0]
        if not isinstance(first, Event) or not handler.matches(first):
            continue
        if per_user and taken.get(run.user_id, 0) >= per_user:
            beyond.append(run.position_id)
            continue
        taken[run.user_id] = taken.get(run.user_id, 0) + 1
        events.append(first)
    return events, beyond


@dataclass(slots=True)
class Batched:
    """What the batch handlers did for one claim: each event's result, and the positions
    left for the next claim (a user's beyond ``per_user``)."""

    results: Prepared = field(default_factory=dict)
    left: set[str] = field(default_factory=set)


async def prepare(handlers: Registry, runs: Sequence[Run[Any]], per_user: int, log: Any) -> Batched:
    """Run every batch handler over its events (two or more)."""
    done = Batched()
    for handler in handlers.handlers:
        if handler.batch is None:
            continue
        events, beyond = batchable(handler, runs, per_user)
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
            done.results[(handler.name, event_id)] = result
        done.left.update(beyond)
    return done
