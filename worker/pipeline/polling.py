"""When the dispatcher polls instead of waiting for wake-ups. Pure: no I/O, no clock.

After ``POLL_AFTER_BUSY_CLAIMS`` busy claims in a row (full, or that saw events arrive fast
enough to linger: see worker/pipeline/claim_schedule.py) the drainer stops waiting for
wake-ups and claims every ``linger_seconds`` on its own, and the listener is told to pause
(UNLISTEN): at that rate every notification finds a claim already due, and
receiving one costs the worker and PostgreSQL more than the rest of the pipeline's work per
event. ``POLL_END_AFTER_QUIET_CLAIMS`` claims in a row that would not linger end it (one
empty claim is not enough: with several workers each claim takes a share, and some find
none): the listener LISTENs again and then wakes the dispatcher, so an event committed
between that claim and the LISTEN is claimed right after. (A network driver turns its
interrupts off while it polls a busy card, the same way.) At 500 events/s claims rarely find
four events, so moderate rates keep their latency. With ``linger_seconds = 0`` it never
polls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Polling starts after this many busy claims in a row (LINGER_MIN_EVENTS or more arrived,
# or full) ...
POLL_AFTER_BUSY_CLAIMS: Final = 3
# ... and ends after this many quiet claims in a row: with other workers sharing the stream,
# a claim can come back empty while events pour in (see worker/pipeline/arrival_rate.py).
POLL_END_AFTER_QUIET_CLAIMS: Final = 2


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
