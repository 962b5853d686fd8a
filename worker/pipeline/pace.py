"""How fast events arrive, as one worker can tell from its claims. Pure: no I/O, no clock.

The dispatcher lingers and polls (see worker/pipeline/dispatcher.py) when events arrive
faster than its claims go round. Alone, a worker's claim finds every event committed since
its previous claim, so what the claim found is the measure. When several workers share the
stream, each claim finds only a share: three workers sharing 1,200 events/s found one or two
events per claim, never polled, and each spent most of its time receiving notifications
(every listener hears every one). Two more signals count what the others took:

* the wake-ups (notifications) that came since the previous claim began;
* how far the newest event id claimed moved since then (while polling, wake-ups are
  paused; ids are drawn from one sequence, so the distance counts everyone's events, and a
  rolled-back transaction's gap only overstates it a little).

Those two count only when they came at polling's pace or faster (``min_events`` per
``linger_seconds``): events that piled up during a slow batch (a handler waiting on an
exchange) say nothing about the rate.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Arrivals:
    min_events: int  # events per linger_seconds that count as a fast stream
    linger_seconds: float
    _started: float | None = None  # when the previous claim began (monotonic seconds)
    _wakes: int = 0  # the wake-up count when it began
    _newest: int | None = None  # the highest event id claimed so far

    def after_claim(self, *, started: float, wakes: int, found: int, newest: int | None) -> int:
        """About how many events were committed, by anyone, since the previous claim began.

        ``started``: when this claim began; ``wakes``: the wake-up count then (a running
        total); ``found``: the events it may handle; ``newest``: the highest id it claimed
        (None: it claimed none).
        """
        others = 0
        if self._started is not None:
            others = wakes - self._wakes
            if newest is not None and self._newest is not None:
                others = max(others, newest - self._newest)
            if others * self.linger_seconds < self.min_events * (started - self._started):
                others = 0  # slower than polling's pace
        self._started, self._wakes = started, wakes
        if newest is not None:
            self._newest = newest if self._newest is None else max(self._newest, newest)
        return max(found, others)


@dataclass(slots=True)
class PollSwitch:
    """When to poll: after ``start_after`` busy claims in a row, until ``end_after`` quiet
    ones in a row. One quiet claim is not enough to stop: with other workers sharing the
    stream, a claim can find nothing (and so learn nothing of the pace) while events pour
    in. Disabled, it never switches on."""

    start_after: int
    end_after: int
    enabled: bool = True
    on: bool = False
    _busy: int = 0  # busy claims in a row
    _quiet: int = 0  # quiet claims in a row

    def stop(self) -> bool:
        """Switch polling off (the dispatcher backs off: nobody claims); whether it was on."""
        was, self.on = self.on, False
        return was

    def after_claim(self, busy: bool) -> bool:
        """Record a claim; whether that switched polling (on or off: see ``on``)."""
        self._busy, self._quiet = (self._busy + 1, 0) if busy else (0, self._quiet + 1)
        was = self.on
        if self.on:
            self.on = self._quiet < self.end_after
        else:
            self.on = self.enabled and self._busy >= self.start_after
        return self.on != was
