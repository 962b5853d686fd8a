"""worker/pipeline/claim_schedule.py: when the dispatcher claims, how many drainers run,
whether a claim chains, lingers or polls, and how long it backs off. Pure: every test
drives the schedule with made-up times."""

from __future__ import annotations

import random

import pytest

from worker.pipeline.claim_schedule import (
    BUSY_LEAST_PER_CLAIM,
    BUSY_PAUSE_MAX,
    BUSY_PAUSE_PER_CLAIM,
    FIRST_PAUSE,
    HURRY_AFTER,
    LINGER_MIN_EVENTS,
    LINGER_SHARE_MAX,
    AfterClaim,
    ClaimSchedule,
    ServeStep,
)
from worker.pipeline.polling import POLL_AFTER_BUSY_CLAIMS, POLL_END_AFTER_QUIET_CLAIMS
from worker.settings import PipelineSettings

BATCH, LINGER, POLL = 10, 0.005, 1.0


def schedule(*, concurrency: int = 2, linger: float = LINGER) -> ClaimSchedule:
    s = ClaimSchedule(
        batch_size=BATCH,
        concurrency=concurrency,
        linger_seconds=linger,
        poll_interval=POLL,
        reconnect_max=0.4,
        rng=random.Random(7),
    )
    s.restarted(0.0)
    return s


def claim(
    s: ClaimSchedule,
    at: float,
    found: int,
    *,
    claimed: int | None = None,
    chained: bool = False,
    behind_floor: bool = False,
    took: float = 0.001,
    heads: int | None = None,
) -> AfterClaim:
    """A claim from ``at`` to ``at + took`` that found ``found`` events (ids 1..found)."""
    start = s.claim_starting(at)
    return s.claimed(
        start,
        at + took,
        found=found,
        claimed=found if claimed is None else claimed,
        min_pending=1 if found else None,
        newest=found or None,
        behind_floor=behind_floor,
        chained=chained,
        heads=heads,
    )


def test_it_is_built_from_the_pipeline_settings() -> None:
    cfg = PipelineSettings(batch_size=7, concurrency=3, linger_seconds=0.0, poll_interval=0.5)
    s = ClaimSchedule.for_pipeline(cfg)
    assert (s.batch_size, s.concurrency, s.linger_seconds, s.poll_interval) == (7, 3, 0.0, 0.5)
    assert s.reconnect_max == cfg.reconnect_max_seconds
    assert not s.poll.enabled  # no linger, no polling


# -- the serve loop -----------------------------------------------------------------------


def test_a_restart_drains_at_once_from_id_zero() -> None:
    s = schedule()
    assert s.serve(0.0) == ServeStep(start_drainer=True, wait_until=POLL)
    assert s.drainers == 1
    start = s.claim_starting(0.0)
    assert start.full and start.floor == 0


def test_no_wake_up_no_drainer_until_the_periodic_poll() -> None:
    s = schedule()
    s.serve(0.0)
    claim(s, 0.0, found=1)
    s.drainer_left()
    assert s.serve(0.5) == ServeStep(start_drainer=False, wait_until=POLL)
    step = s.serve(POLL)  # the periodic poll: a wake-up, and a full claim
    assert step == ServeStep(start_drainer=True, wait_until=2 * POLL)
    assert s.claim_starting(POLL).full


@pytest.mark.parametrize(
    ("now", "starts", "wait_until"),
    [
        (0.0012, False, 0.001 + HURRY_AFTER),  # the running batch may pick the wake-up up
        (0.001 + HURRY_AFTER, True, POLL),  # it is slow (a handler waits): another drainer
    ],
)
def test_a_wake_up_during_a_batch_waits_for_it_unless_it_is_slow(
    now: float, starts: bool, wait_until: float
) -> None:
    s = schedule()
    s.serve(0.0)
    claim(s, 0.0, found=1)  # claimed at 0.001, being handled
    s.woken()
    step = s.serve(now)
    assert step.start_drainer == starts and step.wait_until == pytest.approx(wait_until)


def test_no_drainer_starts_while_one_claims_lingers_or_all_run() -> None:
    s = schedule(concurrency=2)
    s.serve(0.0)
    s.claim_starting(0.0)  # claiming
    s.woken()
    assert not s.serve(1.0 + 0.5).start_drainer
    s.claim_failed()
    with s.lingering.waiting():
        assert not s.serve(0.5).start_drainer
    s.drainers = 2
    assert not s.serve(0.5).start_drainer


def test_no_drainer_starts_for_a_wake_up_while_one_waits_with_nothing_to_take() -> None:
    """Its pause ends when a batch of this process commits; a wake-up meanwhile is most
    likely of an event that another claim's handlers wrote, and another claim would read
    the pending backlog to find nothing again."""
    s = schedule(concurrency=2)
    s.serve(0.0)
    claim(s, 0.0, found=1)  # handling, slow
    s.woken()
    with s.busy.waiting():
        assert not s.serve(0.5).start_drainer
    assert s.serve(0.5).start_drainer


def test_with_no_drainer_left_a_wake_up_waits_out_the_linger() -> None:
    s = schedule()
    s.serve(0.0)
    claim(s, 0.100, found=LINGER_MIN_EVENTS)  # fast: the next claim not before 0.105
    s.drainer_left()
    s.woken()
    step = s.serve(0.102)
    assert not step.start_drainer and step.wait_until == pytest.approx(0.100 + LINGER)
    assert s.serve(0.100 + LINGER).start_drainer


# -- wake-ups ------------------------------------------------------------------------------


def test_only_the_first_wake_up_after_a_claim_signals() -> None:
    s = schedule()
    s.serve(0.0)
    claim(s, 0.0, found=1)
    assert [s.woken() for _ in range(3)] == [True, False, False]
    assert s.uncovered
    claim(s, 0.01, found=3)  # covers them
    assert not s.uncovered
    assert s.woken()


def test_a_paused_drainer_is_signalled_by_every_wake_up() -> None:
    s = schedule()
    s.serve(0.0)
    claim(s, 0.0, found=1)
    s.woken()
    with s.pausing.waiting():
        assert [s.woken() for _ in range(2)] == [True, True]
    assert not s.woken()


# -- claims --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("found", "claimed", "full", "add_drainer"),
    [
        (BATCH, BATCH, True, True),  # a backlog: another drainer claims meanwhile
        (3, BATCH, True, True),  # held back some, but a full claim
        (0, BATCH, False, False),  # held back whole: no backlog to add drainers for
        (BATCH - 1, BATCH - 1, False, False),
    ],
)
def test_a_full_claim_is_a_backlog(found: int, claimed: int, full: bool, add_drainer: bool) -> None:
    s = schedule(concurrency=2)
    s.serve(0.0)
    after = claim(s, 0.0, found, claimed=claimed)
    assert (after.full, after.add_drainer) == (full, add_drainer)
    assert s.drainers == (2 if add_drainer else 1)


def test_drainers_stop_joining_at_the_concurrency() -> None:
    s = schedule(concurrency=2)
    s.serve(0.0)
    assert [claim(s, t, BATCH).add_drainer for t in (0.0, 0.01, 0.02)] == [True, False, False]


@pytest.mark.parametrize(
    ("found", "linger_until"),
    [
        (1, 0.200),  # a trickle: the next claim may go at once
        (LINGER_MIN_EVENTS - 1, 0.200),
        (LINGER_MIN_EVENTS, 0.200 + LINGER),  # events arrive fast: fewer, larger claims
        (BATCH, 0.100),  # full: a backlog never waits (the previous claim's linger stays)
    ],
)
def test_a_claim_that_saw_events_arrive_fast_makes_the_next_one_linger(
    found: int, linger_until: float
) -> None:
    s = schedule()
    s.serve(0.0)
    claim(s, 0.100, found=0, took=0.0)  # the previous claim, 100 ms before
    claim(s, 0.200, found)
    assert s.linger_left(0.200) == pytest.approx(linger_until - 0.200)


def test_a_wake_up_during_the_claim_or_a_chained_commit_signals() -> None:
    s = schedule(concurrency=2)
    s.serve(0.0)
    start = s.claim_starting(0.0)
    s.woken()  # arrives while the claim is out
    after = s.claimed(
        start, 0.001, found=1, claimed=1, min_pending=1, newest=1, behind_floor=False,
        chained=False,
    )  # fmt: skip
    assert after.signal
    assert not claim(s, 0.002, found=1).signal
    s.drainers = 2  # another drainer may wait behind the batch this claim committed
    assert claim(s, 0.003, found=1, chained=True).signal
    s.drainers = 1
    assert not claim(s, 0.004, found=1, chained=True).signal


def test_a_claim_held_back_behind_the_floor_makes_the_next_one_full() -> None:
    s = schedule()
    s.serve(0.0)
    claim(s, 0.0, found=1)  # the first claim is full (from id 0)
    assert not s.claim_starting(0.01).full
    s.claim_failed()
    claim(s, 0.02, found=1, behind_floor=True)
    assert s.claim_starting(0.03).full


def test_the_floor_follows_what_claims_saw_once_it_settles() -> None:
    s = schedule()
    s.serve(0.0)
    for at, lowest in ((0.0, 5), (0.5, 9), (1.6, 12)):
        start = s.claim_starting(at)
        s.claimed(
            start, at, found=1, claimed=1, min_pending=lowest, newest=lowest,
            behind_floor=False, chained=False,
        )  # fmt: skip
    assert s.claim_starting(1.7).floor == 5  # seen at 0.0, settled by 1.6 (settle 1.0 s)


def test_polling_starts_after_busy_claims_and_ends_after_quiet_ones() -> None:
    s = schedule()
    s.serve(0.0)
    switched = [
        claim(s, 0.01 * n, LINGER_MIN_EVENTS).polling_switched
        for n in range(POLL_AFTER_BUSY_CLAIMS)
    ]
    assert switched == [False] * (POLL_AFTER_BUSY_CLAIMS - 1) + [True] and s.polling
    quiet = [claim(s, 1 + n, 1).polling_switched for n in range(POLL_END_AFTER_QUIET_CLAIMS)]
    assert quiet == [False] * (POLL_END_AFTER_QUIET_CLAIMS - 1) + [True] and not s.polling


def test_with_linger_off_it_never_polls() -> None:
    s = schedule(linger=0.0)
    s.serve(0.0)
    assert not any(claim(s, 0.01 * n, BATCH).polling_switched for n in range(10))


# -- chained claims and drainers ----------------------------------------------------------


@pytest.mark.parametrize(
    ("full", "retry_soon", "woken", "polling", "now", "chains"),
    [
        (True, False, False, False, 0.0, True),  # a backlog: claim on, committing on the way
        (False, False, False, False, 1.0, False),  # nothing new: the chain ends
        (False, False, True, False, 1.0, True),  # a wake-up came in meanwhile
        (False, False, True, False, 0.100, False),  # ... but the linger is not over
        (False, False, False, True, 1.0, True),  # polling, the one drainer claims on
        (True, True, True, True, 1.0, False),  # held back behind another claim: pause
    ],
)
def test_when_the_next_claim_goes_with_the_commit(
    full: bool, retry_soon: bool, woken: bool, polling: bool, now: float, chains: bool
) -> None:
    s = schedule()
    s.serve(0.0)
    claim(s, 0.1, found=LINGER_MIN_EVENTS)  # lingers until 0.105
    s.poll.on = polling
    if woken:
        s.woken()
    assert s.chain_next(now, full=full, retry_soon=retry_soon) == chains


def test_no_claim_chains_or_lingers_while_stopping() -> None:
    s = schedule()
    s.serve(0.0)
    claim(s, 0.1, found=LINGER_MIN_EVENTS)
    s.stopping = True
    assert not s.chain_next(0.1, full=True, retry_soon=False)
    assert s.linger_left(0.1) == 0.0


@pytest.mark.parametrize(
    ("full", "woken", "polling", "drainers", "drains_on"),
    [
        (True, False, False, 1, True),
        (False, True, False, 1, True),
        (False, False, True, 1, True),  # the one polling drainer stays
        (False, False, True, 2, False),  # an extra one leaves with the backlog
        (False, False, False, 1, False),
    ],
)
def test_when_a_drainer_claims_again_after_a_chain(
    full: bool, woken: bool, polling: bool, drainers: int, drains_on: bool
) -> None:
    s = schedule()
    s.serve(0.0)
    claim(s, 0.0, found=1)
    s.drainers, s.poll.on = drainers, polling
    if woken:
        s.woken()
    assert s.drain_on(full=full) == drains_on


def test_a_drainer_behind_another_claim_pauses_longer_each_time_up_to_the_poll() -> None:
    s = schedule()
    pauses, pause = [], 0.0
    for _ in range(10):
        pause = s.pause_after(pause)
        pauses.append(pause)
    assert pauses[:3] == [FIRST_PAUSE, 2 * FIRST_PAUSE, 4 * FIRST_PAUSE]
    assert pauses[-1] == POLL and pauses == sorted(pauses)


def test_a_drainer_with_nothing_to_take_pauses_longer_each_time_up_to_a_short_cap() -> None:
    """Every pending event another claim's, and the claim cheap: the pause doubles, but
    stays short (it bounds how late a new event may be)."""
    s = schedule()
    pauses, pause = [], 0.0
    for _ in range(10):
        pause = s.busy_pause_after(pause)
        pauses.append(pause)
    assert pauses[:3] == [FIRST_PAUSE, 2 * FIRST_PAUSE, 4 * FIRST_PAUSE]
    assert pauses[-1] == BUSY_PAUSE_MAX < POLL and pauses == sorted(pauses)


@pytest.mark.parametrize(
    ("previous", "claim_seconds", "pause", "least"),
    [
        (0.0, 0.0001, FIRST_PAUSE, 0.001),  # little pending: the claim is cheap
        (0.0, 0.03, 0.9, 0.3),  # behind a backlog: thirty times what it took, at least ten
        (BUSY_PAUSE_MAX, 0.005, BUSY_PAUSE_MAX, 0.05),  # the doubling's cap, the longer
        (BUSY_PAUSE_MAX, 1.0, POLL, POLL),  # never longer than the periodic poll
    ],
)
def test_a_drainer_with_nothing_to_take_pauses_by_what_its_claim_took(
    previous: float, claim_seconds: float, pause: float, least: float
) -> None:
    """A claim that finds nothing costs PostgreSQL what is pending: the pause after it is
    paced by that cost (thirty times; at least ten, whatever its process releases), so
    that such claims take a small share of the drainer's time."""
    assert (BUSY_PAUSE_PER_CLAIM, BUSY_LEAST_PER_CLAIM) == (30.0, 10.0)
    s = schedule()
    assert s.busy_pause_after(previous, claim_seconds) == pytest.approx(pause)
    assert s.busy_least(claim_seconds) == pytest.approx(least)
    assert s.busy_least(claim_seconds) <= s.busy_pause_after(previous, claim_seconds)


# -- backoff -------------------------------------------------------------------------------


def test_failures_back_off_longer_each_time_until_a_batch_commits() -> None:
    s = schedule()
    failures = [s.failed() for _ in range(5)]
    assert [f.attempt for f in failures] == [1, 2, 3, 4, 5]
    ceilings = [min(0.4, 0.1 * 2 ** (n - 1)) for n in range(1, 6)]
    assert all(c / 2 <= f.delay <= c for f, c in zip(failures, ceilings, strict=True))
    s.committed()
    assert s.failures == 0 and s.failed().attempt == 1


def test_a_failure_stops_polling() -> None:
    s = schedule()
    s.poll.on = True
    assert s.failed().polling_switched and not s.polling
    assert not s.failed().polling_switched


@pytest.mark.parametrize(
    ("others_took", "linger"),
    [
        (0, LINGER),  # alone: what arrived is what it claimed
        (4, 2 * LINGER),  # another worker took half of what arrived
        (40, LINGER_SHARE_MAX * LINGER),  # many workers: at most LINGER_SHARE_MAX lingers
    ],
)
def test_a_claim_that_found_a_share_of_the_arrivals_lingers_longer(
    others_took: int, linger: float
) -> None:
    """Workers sharing a stream each linger by the share the others took (ids moved past
    what this one claimed), so that together they claim about as often as one."""
    s = schedule()
    s.serve(0.0)
    start = s.claim_starting(0.000)
    s.claimed(
        start, 0.001, found=1, claimed=1, min_pending=1, newest=1, behind_floor=False,
        chained=False,
    )  # fmt: skip
    start = s.claim_starting(0.005)
    newest = 1 + LINGER_MIN_EVENTS + others_took
    s.claimed(
        start, 0.006, found=LINGER_MIN_EVENTS, claimed=LINGER_MIN_EVENTS, min_pending=2,
        newest=newest, behind_floor=False, chained=False,
    )  # fmt: skip
    assert s.linger_left(0.005) == pytest.approx(linger)


@pytest.mark.parametrize(
    ("heads", "left"),
    [
        (BATCH, True),  # first events alone filled it: more may wait
        (BATCH - 3, False),  # the rest of it follows them: it took every one it saw
        (None, True),  # unknown: taken as first events
    ],
)
def test_a_full_claim_leaves_first_events_for_others_only_if_they_alone_filled_it(
    heads: int | None, left: bool
) -> None:
    """A claim whose room was filled by later events of the positions it took saw every
    claimable first event and took it: a drainer paused with nothing to take would find
    nothing (the dispatcher wakes it only when first events may be left)."""
    s = schedule()
    after = claim(s, 0.1, found=BATCH, heads=heads)
    assert (after.full, after.heads_left) == (True, left)
