"""How fast events arrive, as one worker can tell from its claims. Pure: no I/O, no clock.

The dispatcher lingers and polls (see worker/pipeline/claim_schedule.py) when events arrive
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
