"""When the dispatcher claims, and how many drainers claim at once. Pure: no I/O; every
method that needs the time takes ``now`` (monotonic seconds). The dispatcher
(worker/pipeline/dispatcher.py) does the waiting and the claiming and asks this object what
to do next.

Drainers: a drainer claims, handles and settles batches until a claim comes back short with
no wake-up left uncovered (one that arrived after the latest claim began). While claims come
back full (a backlog), more drainers join, up to ``concurrency``, so that while one waits
for PostgreSQL another publishes to Redis. A wake-up that arrives while every drainer is past
its claim is left to the running drainer, which claims again as soon as its batch is settled
(a millisecond or two; the commit and the next claim go in one round trip, a *chained*
claim): under a steady stream of commits that turns many one-event claims into fewer larger
ones, each claim costing the worker and PostgreSQL far more than an event does. Only if that
batch is still running ``HURRY_AFTER`` seconds later (a handler waiting on an exchange) does
another drainer start, so slow handlers do not hold up everyone's latency. Per-position order
still holds: a claim leaves alone any event whose predecessor another claim holds.

Linger: when at least ``LINGER_MIN_EVENTS`` events arrived since the previous claim (what the
claim found, or more when other workers share the stream: see
worker/pipeline/arrival_rate.py) and the claim was not full, events are arriving faster than
claims go round, and the next claim waits until ``linger_seconds`` after that claim began
(longer, up to ``LINGER_SHARE_MAX`` times, when other workers took part of what arrived). At
saturation that makes claims twice as large and half as many (each claim's statements cost
PostgreSQL as much as a few events); at a trickle (fewer events per claim) nothing waits, so
latency at moderate rates is untouched. A full claim (a backlog) never waits.

Polling (worker/pipeline/polling.py): under a steady stream the drainer claims at the
linger's pace on its own and the listener's wake-ups are paused.

Full claims: a claim starts from the claim floor (worker/pipeline/claim_floor.py) except at
start, every ``poll_interval`` (the periodic poll, which also covers a lost wake-up) and
after a claim held back an event whose predecessor is below the floor: those start from id 0.

Backoff: when the dispatcher's own claim, settlement or publish fails (an outage), nobody
claims for a capped exponential delay with jitter that grows with each failure in a row,
until a batch commits.

Over 300 lines on purpose: every scheduling decision of the dispatcher shares one state
object; spread over files, one state machine would be read in pieces.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final

from worker.events import retry_delay
from worker.pipeline.arrival_rate import Arrivals
from worker.pipeline.claim_floor import ClaimFloor
from worker.pipeline.polling import POLL_AFTER_BUSY_CLAIMS, POLL_END_AFTER_QUIET_CLAIMS, PollSwitch
from worker.settings import PipelineSettings

# A wake-up that arrives while a batch is being handled waits for that batch to be settled
# (its drainer claims again right after) unless the batch is still running this long after
# its claim; then another drainer starts.
HURRY_AFTER: Final = 0.005
# A claim (not full) that saw at least this many events arrive since the previous one began
# means events are arriving fast: the next claim waits until ``linger_seconds`` after this
# one began.
LINGER_MIN_EVENTS: Final = 4
# ... and longer when other workers took part of what arrived: by the share they took, at
# most this many times. Three workers that each claim every ``linger_seconds`` claim three
# times as often as one, each claim a third as large, and claims cost the workers and
# PostgreSQL more than their events do (docs/benchmarks.md, runs Q and R: three workers at
# saturation used 0.42 s of CPU per 1,000 events claiming at one worker's pace, 0.22 at
# their share's). At most twice: no event waits for a claim much longer than beside one
# worker.
LINGER_SHARE_MAX: Final = 2.0


@dataclass(frozen=True, slots=True)
class ServeStep:
    """What the serve loop does now: start a drainer or not, then wait for a signal until
    ``wait_until`` at the latest."""

    start_drainer: bool
    wait_until: float


@dataclass(frozen=True, slots=True)
class ClaimStart:
    """A claim about to be sent: from which id, and what :meth:`ClaimSchedule.claimed`
    needs to know of its beginning."""

    started: float
    wakes: int  # the wake-up count when it began
    full: bool  # from id 0 (see claim_floor.py)
    floor: int  # the lowest id it looks at (0 when full)


@dataclass(frozen=True, slots=True)
class AfterClaim:
    """What a claim's result asks of the dispatcher."""

    full: bool  # a backlog: a whole batch came back
    signal: bool  # wake the waiters: another claim may go
    polling_switched: bool  # polling went on or off (the listener pauses or resumes)
    add_drainer: bool  # start another drainer (counted already)
    # first events of positions alone filled it: others may be left for another claim (a
    # claim filled by its positions' later events took every first event it saw)
    heads_left: bool = False


@dataclass(frozen=True, slots=True)
class Failure:
    """The dispatcher's claims failed: back off ``delay`` seconds."""

    attempt: int  # failures in a row
    delay: float
    polling_switched: bool  # polling went off (nobody claims while backing off)


# A drainer whose batch held back an event that another claim holds pauses this long before
# claiming again, twice as long each time in a row, up to ``poll_interval``.
FIRST_PAUSE: Final = 0.005
# A drainer whose claim found nothing it may take while events are pending (other claims
# hold them) pauses the same way, up to this long: until then only a claim of its own
# process ending, or a new position's notification, cuts the pause short (other
# notifications do not: most are of events the other claims will take).
BUSY_PAUSE_MAX: Final = 0.25
# ... and at least this many times as long as that claim took, up to ``poll_interval``,
# which only a stop cuts short. A claim that finds nothing reads every pending event to
# learn it (the held first events, their positions' later ones), so it costs what is
# pending: behind a backlog of thousands 10-90 ms of PostgreSQL's time. Three workers'
# drainers with nothing to take, pausing 0.25 s, spent 1.5-2.4 s claiming per 3 s exit
# phase, and woken by their own process's chained claims they claimed every ~30 ms
# (docs/benchmarks.md). Paced by its cost, a drainer with nothing to take spends at most a
# tenth of its connection's time claiming, and still claims every few milliseconds when
# little is pending. (A chained claim's time includes the commit of the batch before it,
# sent in the same round trip: a slow commit lengthens the pause too.)
BUSY_LEAST_PER_CLAIM: Final = 10.0
# Unless a batch of its own process releases events or a new position comes in (its
# notification; its first event is no claim's yet), the pause lasts at least this many
# times as long as that claim, up to ``poll_interval``: the events it found held are then
# other processes', whose own chains take their positions' later events, and claiming
# again would mostly find nothing. Three workers, 1,000 entries and exits, 12 rounds: 64
# claims and 1.5 s of PostgreSQL's time a burst with ten times, 44 and 1.0 s with thirty
# (one worker: 22 and 0.6 s); see docs/benchmarks.md.
BUSY_PAUSE_PER_CLAIM: Final = 30.0
# The dispatcher's backoff after its own claims fail: the first delay, doubled per failure
# in a row, capped at ``reconnect_max_seconds``.
BACKOFF_BASE: Final = 0.1


@dataclass(slots=True)
class Waiters:
    """How many drainers wait for one thing (the linger, a pause behind another claim)."""

    count: int = 0

    @contextmanager
    def waiting(self) -> Iterator[None]:
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1


@dataclass(slots=True)
class ClaimSchedule:
    """The dispatcher's scheduling state, shared by its drainers, and the decisions on it
    (see the module notes). Build it with :meth:`for_pipeline`."""

    batch_size: int
    concurrency: int
    linger_seconds: float
    poll_interval: float
    reconnect_max: float  # seconds: the backoff's cap
    rng: random.Random = field(default_factory=random.Random)
    stopping: bool = False  # no claim starts any more
    failures: int = 0  # infrastructure failures since the last batch that committed
    drainers: int = 0  # running
    # drainers waiting out the linger (no other drainer starts meanwhile) ...
    lingering: Waiters = field(default_factory=Waiters)
    # ... and paused behind another claim (every wake-up signals them)
    pausing: Waiters = field(default_factory=Waiters)
    # ... and paused because every pending event was another claim's (a wake-up starts no
    # drainer meanwhile: see :meth:`serve`)
    busy: Waiters = field(default_factory=Waiters)
    floor: ClaimFloor = field(init=False)
    arrivals: Arrivals = field(init=False)
    poll: PollSwitch = field(init=False)
    _wakes: int = 0  # wake-ups seen (notifications, periodic polls, restarts): a running total
    _claimed_through: int = 0  # wake-ups covered by a claim begun
    _signalled: int = 0  # the wake-up count last signalled
    _claiming: int = 0  # drainers in a claim
    _full_due: bool = True  # the next claim starts from id 0
    _batch_started: float = 0.0  # when the latest batch was claimed
    _linger_until: float = 0.0  # no claim before this, unless a backlog
    _next_poll: float = 0.0  # the next periodic (full) claim

    def __post_init__(self) -> None:
        self.floor = ClaimFloor(settle=min(1.0, self.poll_interval))
        self.arrivals = Arrivals(LINGER_MIN_EVENTS, self.linger_seconds)
        self.poll = PollSwitch(
            POLL_AFTER_BUSY_CLAIMS, POLL_END_AFTER_QUIET_CLAIMS, self.linger_seconds > 0
        )

    @classmethod
    def for_pipeline(cls, cfg: PipelineSettings) -> ClaimSchedule:
        return cls(
            batch_size=cfg.batch_size,
            concurrency=cfg.concurrency,
            linger_seconds=cfg.linger_seconds,
            poll_interval=cfg.poll_interval,
            reconnect_max=cfg.reconnect_max_seconds,
        )

    @property
    def polling(self) -> bool:
        """Claiming every ``linger_seconds`` on its own, wake-ups paused."""
        return self.poll.on

    @property
    def uncovered(self) -> bool:
        """A wake-up arrived after the latest claim began."""
        return self._wakes > self._claimed_through

    # -- wake-ups and the serve loop ----------------------------------------------------------

    def woken(self) -> bool:
        """A notification arrived; whether to signal the waiters. Under a steady stream of
        commits most notifications find a wake-up already signalled and not yet covered by
        a claim: they are only counted (the serve loop and the drainers look at the count),
        which saves a task switch per notification. A drainer pausing behind another claim
        is always signalled."""
        self._wakes += 1
        if self._signalled <= self._claimed_through or self.pausing.count:
            self._signalled = self._wakes
            return True
        return False

    def restarted(self, now: float) -> None:
        """The serve loop (re)starts, no drainer running: drain whatever is there, from
        id 0; the next periodic poll is ``poll_interval`` away."""
        self.drainers = self._claiming = 0
        self._wakes += 1
        self._full_due = True
        self._next_poll = now + self.poll_interval

    def serve(self, now: float) -> ServeStep:
        """The serve loop's turn: the periodic poll when it is due (a wake-up, in case one
        was lost, and a full claim, in case an event committed below the floor); a new
        drainer when a wake-up is uncovered and no drainer is claiming, lingering or paused
        with nothing to take (after ``HURRY_AFTER`` when one is handling a batch, after the
        linger when none runs).

        A drainer whose claim found every pending event held by other claims (``busy``)
        claims again when its pause ends, or once its least pause is over (see
        :meth:`busy_least`) when a batch of this process that held events commits or a new
        position comes in; a wake-up meanwhile starts no other drainer. With several workers sharing
        a burst, most wake-ups are then of events that other claims' handlers write (their
        positions' later events, which those claims' own next claims take), and a claim
        that finds nothing still reads the pending backlog to learn it: at one claim per
        wake-up, three workers exiting 1,000 positions spent 1.4-2.1 s of PostgreSQL's
        time in claims against 0.2-0.3 s for one worker (docs/benchmarks.md)."""
        if now >= self._next_poll:
            self._wakes += 1
            self._full_due = True
            self._next_poll = now + self.poll_interval
        wait_until = self._next_poll
        waiting = self._claiming or self.lingering.count or self.busy.count
        idle = not waiting and self.drainers < self.concurrency
        if idle and self.uncovered:
            if self.drainers:
                start_at = self._batch_started + HURRY_AFTER
            else:
                start_at = max(now, self._linger_until)
            if start_at <= now:
                self.drainers += 1
                return ServeStep(True, wait_until)
            wait_until = min(wait_until, start_at)
        return ServeStep(False, wait_until)

    # -- claims --------------------------------------------------------------------------------

    def claim_starting(self, now: float) -> ClaimStart:
        """A drainer is about to claim: it covers every wake-up seen so far."""
        self._claimed_through = max(self._claimed_through, self._wakes)
        full, self._full_due = self._full_due, False
        self._claiming += 1
        return ClaimStart(now, self._wakes, full, 0 if full else self.floor.value)

    def claim_failed(self) -> None:
        """The claim raised: it no longer runs (the dispatcher backs off)."""
        self._claiming -= 1

    def claimed(
        self,
        start: ClaimStart,
        now: float,
        *,
        found: int,
        claimed: int,
        min_pending: int | None,
        newest: int | None,
        behind_floor: bool,
        chained: bool,
        heads: int | None = None,
    ) -> AfterClaim:
        """Record a claim's result. ``found``: the events it may handle; ``claimed``: every
        event it locked (held back ones too); ``min_pending``, ``newest``, ``behind_floor``:
        see :class:`worker.db.outbox.Batch`; ``chained``: it committed the batch before it
        (so a claim held back behind that batch may go now); ``heads``: the first events of
        positions among those it locked (None: unknown, taken as all)."""
        self._claiming -= 1
        signal = chained and self.drainers > 1
        self._batch_started = now
        self.floor.observe(min_pending, full=start.full, now=now)
        if behind_floor:  # only a full claim can reach it
            self._full_due = True
        signal = signal or self.uncovered  # a wake-up came during the claim: another may go
        # a batch held back whole is no backlog to add drainers for
        full = claimed >= self.batch_size and found > 0
        heads_left = full and (heads is None or heads >= self.batch_size)
        arrived = self.arrivals.after_claim(
            started=start.started, wakes=start.wakes, found=found, newest=newest
        )
        fast = arrived >= LINGER_MIN_EVENTS
        switched = self.poll.after_claim(full or fast)
        if not full:
            linger = self._linger_for(arrived, claimed) if fast else 0.0
            self._linger_until = start.started + linger
        add = full and self.drainers < self.concurrency  # claims the next while this one runs
        if add:
            self.drainers += 1
        return AfterClaim(full, signal, switched, add, heads_left)

    def _linger_for(self, arrived: int, claimed: int) -> float:
        """How long the next claim waits after this one began, events arriving fast:
        ``linger_seconds``, longer by the share of the arrivals that other workers took
        (``arrived`` of which this claim locked ``claimed``), at most ``LINGER_SHARE_MAX``
        times."""
        share = arrived / max(1, claimed)
        return self.linger_seconds * min(LINGER_SHARE_MAX, max(1.0, share))

    def chain_next(self, now: float, *, full: bool, retry_soon: bool) -> bool:
        """Whether to claim again right away, committing the batch just handled on the way:
        after a full batch (a backlog), or with a wake-up or poll due and no linger left.
        Not while stopping, nor when the batch held back an event another claim holds (that
        drainer pauses first)."""
        if self.stopping or retry_soon:
            return False
        if full:
            return True
        return (self._polls() or self.uncovered) and self._linger_until <= now

    # -- a drainer between chains --------------------------------------------------------------

    def drain_on(self, *, full: bool) -> bool:
        """After a chain of claims committed: whether its drainer claims again (after the
        linger unless ``full``) rather than leaving. While polling one drainer keeps
        claiming; extra ones leave with the backlog."""
        return full or self._polls() or self.uncovered

    def pause_after(self, previous: float) -> float:
        """How long a drainer pauses when its batch held back an event another claim holds,
        ``previous`` being its last pause in a row (0 for the first)."""
        return min(max(2 * previous, FIRST_PAUSE), self.poll_interval)

    def busy_pause_after(self, previous: float, claim_seconds: float = 0.0) -> float:
        """How long a drainer pauses when every pending event is another claim's,
        ``previous`` being its last pause in a row (0 for the first) and ``claim_seconds``
        how long the claim that found so took."""
        doubled = min(self.pause_after(previous), BUSY_PAUSE_MAX)
        # never shorter than busy_least: thirty times the claim against ten
        return max(doubled, self._paced(BUSY_PAUSE_PER_CLAIM, claim_seconds))

    def busy_least(self, claim_seconds: float) -> float:
        """How long, at least, a drainer pauses after a claim that took ``claim_seconds``
        and found every pending event another claim's, whatever releases events meanwhile
        (a stop aside)."""
        return self._paced(BUSY_LEAST_PER_CLAIM, claim_seconds)

    def _paced(self, per_claim: float, claim_seconds: float) -> float:
        """``per_claim`` times what a claim took, up to ``poll_interval``."""
        return min(per_claim * claim_seconds, self.poll_interval)

    def linger_left(self, now: float) -> float:
        """Seconds before the next claim may go (a stop ends the wait)."""
        return 0.0 if self.stopping else self._linger_until - now

    def drainer_left(self) -> None:
        self.drainers -= 1

    # -- failures ------------------------------------------------------------------------------

    def failed(self) -> Failure:
        """The dispatcher's claim, settlement or publish failed: polling stops, and the
        backoff grows with each failure since the last batch that committed."""
        switched = self.poll.stop()
        self.failures += 1
        delay = retry_delay(self.failures, BACKOFF_BASE, self.reconnect_max, self.rng)
        return Failure(self.failures, delay, switched)

    def committed(self) -> None:
        """A batch committed: the backoff starts over."""
        self.failures = 0

    def _polls(self) -> bool:
        return self.polling and self.drainers == 1
