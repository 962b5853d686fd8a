"""The outages the dispatcher is waiting out, by target. Pure: no I/O; the time is passed in.

An outage (a server unavailable: ``database`` or ``redis``, see worker/driver_errors.py) is
never an event's fault. A handler that meets one defers its event without counting an
attempt, for a backoff that grows with each call that meets it again (capped, with jitter);
until that backoff runs out, events for the handlers that met it are deferred without calling
them, so an outage costs one failing call per backoff step instead of one per event. An
outage that a handler met is over when such a handler succeeds (the dispatcher's claims go
through another pool: one that commits says nothing about the handlers' connections); one
that only the dispatcher met is over when a batch commits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final

from worker.events import retry_delay

# The first backoff of a handler that met an outage; twice as long after each call that met
# it again, up to the cap (``reconnect_max_seconds``).
OUTAGE_BASE_SECONDS: Final = 0.1
# Who met an outage, besides handlers (by name): the dispatcher's claims, settlements and
# publishes.
DISPATCHER: Final = "dispatcher"


@dataclass(slots=True)
class OutageState:
    """An outage of one target as this dispatcher meets it, from its first sign to its end."""

    target: str  # database | redis
    started: float  # monotonic
    met_by: set[str] = field(default_factory=set)  # handler names, DISPATCHER
    failed_calls: int = 0  # handler calls that met it: the backoff's attempt number
    deferred: int = 0  # events deferred for it
    retry_at: float = 0.0  # handlers in met_by are not called before this (monotonic)


@dataclass(slots=True)
class Outages:
    cap: float  # seconds: the longest backoff
    rng: random.Random = field(default_factory=random.Random)
    by_target: dict[str, OutageState] = field(default_factory=dict)

    def met(self, target: str, who: str, now: float) -> tuple[OutageState, bool]:
        """``who`` (a handler, or DISPATCHER) met an outage of ``target``; the state, and
        whether this is its first sign (the outage started)."""
        state = self.by_target.get(target)
        started = state is None
        if state is None:
            state = self.by_target[target] = OutageState(target, now)
        state.met_by.add(who)
        return state, started

    def call_failed(self, state: OutageState, now: float) -> None:
        """A handler's call met the outage: no handler that met it is called for a longer
        backoff."""
        state.failed_calls += 1
        backoff = retry_delay(state.failed_calls, OUTAGE_BASE_SECONDS, self.cap, self.rng)
        state.retry_at = now + backoff

    def waiting_out(self, handler: str, now: float) -> OutageState | None:
        """The outage this handler met whose backoff has not run out yet, if any."""
        for state in self.by_target.values():
            if handler in state.met_by and now < state.retry_at:
                return state
        return None

    @staticmethod
    def retry_in(state: OutageState, now: float) -> float:
        """Seconds until the outage's backoff runs out (how long an event waits it out)."""
        return max(state.retry_at - now, 0.0)

    def succeeded(self, who: str) -> list[OutageState]:
        """``who`` succeeded: the outages that ended with it. A handler's success ends what
        it met; the dispatcher's (a batch committed) ends only what no handler met too."""
        over = []
        for target, state in list(self.by_target.items()):
            if who not in state.met_by:
                continue
            if who == DISPATCHER and len(state.met_by) > 1:
                state.met_by.discard(who)  # a handler met it too: it ends with its success
                continue
            del self.by_target[target]
            over.append(state)
        return over
