"""Downstream handlers: small, registered per event type, independent of each other.

A handler is ``async def handle(event) -> None``. It may raise: the dispatcher logs the
failure with the event, retries it with backoff and, after ``pipeline.max_attempts``, parks
the event as dead (``position-worker status`` shows it; ``replay`` re-queues it). Not the
event's fault, and no attempt counted: ``RetryLater`` (deferred by its delay) and an outage
(``DatabaseUnavailable``, ``StreamUnavailable``, or a driver's connection error, pool
timeout and the like: ``worker.driver_errors.outage_of``), deferred until the
outage's backoff runs out. Handlers must be idempotent: after a crash an event may be
handled again.

A handler may also take many events at once (``batch``: a claimed batch's events it matches,
one per position, each with nothing of its position waiting on I/O before it in the claim,
at most ``pipeline.user_concurrency`` of one user's; ``batches.py``): it returns each
event's result (None, or what its one-event call would have raised), and the events it
gives none for are handled one by one as usual. The batch runs
before the claim's per-event handlers: the batch handler of an event may then run before
handlers registered ahead of it (all are idempotent and independent).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from worker.events import Event

HandlerFunc = Callable[[Event], Awaitable[None]]
# events -> each handled one's result by event id: None, or what handling it raised
BatchFunc = Callable[[Sequence[Event]], Awaitable[Mapping[int, Exception | None]]]
Predicate = Callable[[Event], bool]


@dataclass(frozen=True, slots=True)
class Handler:
    name: str
    matches: Predicate
    handle: HandlerFunc
    # waits on I/O for long (an exchange): its positions run at the same time as others'
    # (worker/pipeline/handling.py); the others' run one after another, in the claim's task
    slow: bool = False
    batch: BatchFunc | None = None  # many events at once (see the module notes)


@dataclass(slots=True)
class Registry:
    handlers: list[Handler] = field(default_factory=list)

    def add(
        self,
        name: str,
        matches: Predicate,
        handle: HandlerFunc,
        *,
        slow: bool = False,
        batch: BatchFunc | None = None,
    ) -> None:
        if any(h.name == name for h in self.handlers):
            raise ValueError(f"handler {name} is registered twice")
        self.handlers.append(Handler(name, matches, handle, slow, batch))

    def for_event(self, event: Event) -> list[Handler]:
        return [h for h in self.handlers if h.matches(event)]


def any_event(_: Event) -> bool:
    return True


def position_opened(event: Event) -> bool:
    return event.kind == "position" and event.new_status == "open"
