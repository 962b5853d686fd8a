"""Handlers that take many events at once (``Handler.batch``, e.g. a thousand entries of
one signal): which of a claimed batch's events each gets, and their results, kept for each
event's turn (worker/pipeline/handling.py).

An event goes to a batch handler when nothing of its position waits on I/O before it in
the claim: every slow handler of its position's earlier events (and of its own, registered
ahead) has run in one of this claim's batches already, and succeeded. Quick handlers (the
audit log) do not hold it back; they run in their turn afterwards, in event order, as every
event's do. So an exit asked while its position's entry events (quick but for the AI
monitoring start, itself batched) are still in the outbox goes out in the claim's batch of
exits. A batch handler takes one event of a position per claim, the first it matches.

A user with more than ``per_user`` events in a handler's batch has the rest left for the
next claim, from the left event on, so one user's flood cannot make the batch long for
everyone else: the next claim follows at once and takes them in turn with everyone else's.
A flood goes through in batches of ``per_user``, and another user's entry waits for one
short batch, not for the flood. A batch call that raises gives no results and leaves
nothing: its events are then handled one by one, which meets the same failure (an outage
is waited out, an error retried) event by event.
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


def reachable(handler: Handler, run: Run[Any], handlers: Registry, prepared: Prepared) -> int:
    """The index of the run's first event ``handler`` matches, when nothing before it waits
    on I/O (module notes); -1 when there is none, or something does. Pure."""
    for i, item in enumerate(run.items):
        if not isinstance(item, Event):
            return -1  # an unreadable row is parked in its turn: nothing passes it
        for ahead in handlers.for_event(item):
            if ahead.name == handler.name:
                return i
            key = (ahead.name, item.event_id)
            if ahead.slow and (key not in prepared or prepared[key] is not None):
                return -1
    return -1


def batchable(
    handler: Handler,
    runs: Sequence[Run[Any]],
    per_user: int,
    handlers: Registry,
    prepared: Prepared,
) -> tuple[list[Event], dict[str, int]]:
    """The events ``handler`` takes at once, and the positions of those it matched beyond
    their user's ``per_user``, each with the index of that event in its run (the run is left
    for the next claim from there). Pure."""
    taken: dict[str, int] = {}
    events: list[Event] = []
    beyond: dict[str, int] = {}
    for run in runs:
        i = reachable(handler, run, handlers, prepared)
        if i < 0:
            continue
        if per_user and taken.get(run.user_id, 0) >= per_user:
            beyond[run.position_id] = i
            continue
        taken[run.user_id] = taken.get(run.user_id, 0) + 1
        events.append(run.items[i])
    return events, beyond


@dataclass(slots=True)
class Batched:
    """What the batch handlers did for one claim: each event's result, and the positions
    left for the next claim (a user's beyond ``per_user``), each from the index of its
    first event left (0: the whole run)."""

    results: Prepared = field(default_factory=dict)
    left: dict[str, int] = field(default_factory=dict)


async def prepare(handlers: Registry, runs: Sequence[Run[Any]], per_user: int, log: Any) -> Batched:
    """Run every batch handler over its events (two or more), in the order they were
    registered: a later one's events may follow an earlier one's in their runs."""
    done = Batched()
    for handler in handlers.handlers:
        if handler.batch is None:
            continue
        events, beyond = batchable(handler, runs, per_user, handlers, done.results)
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
        for position_id, i in beyond.items():
            done.left[position_id] = min(i, done.left.get(position_id, i))
    return done
