"""The claim floor: the lowest event id a claim needs to look at. Pure: no I/O, no clock.

Handled events leave dead entries at the low end of the pending index until VACUUM removes
them, and a claim that starts from id 0 walks all of them. On a busy audit trail that is
millions (autovacuum waits for a fifth of the table by default): every claim would get
slower the longer the worker runs. A claim from the floor starts where pending events can
still be.

The floor is the lowest pending id a claim saw, taken only once that sighting is
``settle`` seconds old. Ids are drawn when events are written, not when they commit, so a
transaction still open when the claim looked may later commit an id below what it saw;
waiting ``settle`` seconds covers every transaction shorter than that. An event of a longer
one (or a dead event replayed by an operator) is found by a *full* claim, from id 0, which
the dispatcher makes at start, on every periodic poll (``pipeline.poll_interval``) and right
after a claim that held back an event whose predecessor is below the floor (the claim
returns no such event: it takes a position's later events only with its first one, schema/
0017; the check stays as a safety net). Per-position order never depends on the floor: the
claim checks each event's predecessor whatever it is.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ClaimFloor:
    settle: float  # seconds a sighting must age before it becomes the floor
    value: int = 0
    _candidate: tuple[int, float] | None = None  # (lowest pending id seen, when)

    def observe(self, min_pending: int | None, *, full: bool, now: float) -> None:
        """Record what a claim saw: the lowest pending id >= its floor (None: no rows)."""
        if min_pending is None:
            return
        if full and min_pending < self.value:  # something pending below: look from there
            self.value, self._candidate = min_pending, None
        if self._candidate is None:
            self._candidate = (min_pending, now)
            return
        seen, at = self._candidate
        if now - at >= self.settle:
            self.value, self._candidate = min(seen, min_pending), (min_pending, now)
        elif min_pending < seen:  # something lower is pending: the floor may not pass it
            self._candidate = (min_pending, at)
