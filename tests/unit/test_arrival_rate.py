"""worker/pipeline/arrival_rate.py: what a claim says about how fast events come (alone and
when other workers take their share)."""

from __future__ import annotations

from worker.pipeline.arrival_rate import Arrivals

LINGER = 0.005  # seconds; 4 events in it is 800 events/s


def gauge() -> Arrivals:
    return Arrivals(min_events=4, linger_seconds=LINGER)


def test_alone_a_claim_counts_what_it_found() -> None:
    arrivals = gauge()
    assert arrivals.after_claim(started=0.0, wakes=0, found=1, newest=10) == 1
    assert arrivals.after_claim(started=0.005, wakes=6, found=6, newest=16) == 6
    assert arrivals.after_claim(started=0.010, wakes=7, found=1, newest=17) == 1


def test_the_first_claim_counts_only_what_it_found() -> None:
    """Nothing to measure the pace against: not the ids or wake-ups since the start."""
    assert gauge().after_claim(started=100.0, wakes=500, found=2, newest=90_000) == 2


def test_a_claim_that_found_none_counts_the_wake_ups_other_workers_served() -> None:
    """Listening, every worker hears every notification; another worker took the events."""
    arrivals = gauge()
    arrivals.after_claim(started=0.0, wakes=10, found=1, newest=10)
    assert arrivals.after_claim(started=0.004, wakes=16, found=0, newest=None) == 6


def test_a_claim_counts_how_far_the_newest_id_moved() -> None:
    """Polling, there are no wake-ups: the ids say how many events everyone committed."""
    arrivals = gauge()
    arrivals.after_claim(started=0.0, wakes=0, found=2, newest=100)
    assert arrivals.after_claim(started=0.005, wakes=0, found=2, newest=109) == 9
    # an empty claim leaves the newest id seen where it was
    assert arrivals.after_claim(started=0.010, wakes=0, found=0, newest=None) == 0
    assert arrivals.after_claim(started=0.015, wakes=0, found=3, newest=121) == 12


def test_events_that_piled_up_during_a_slow_batch_are_no_fast_stream() -> None:
    """Ten events over two seconds (a handler waited on an exchange) is 5 events/s: only
    what the claim found counts, not the wake-ups or ids that the other workers saw."""
    arrivals = gauge()
    arrivals.after_claim(started=0.0, wakes=0, found=1, newest=1)
    assert arrivals.after_claim(started=2.0, wakes=10, found=2, newest=11) == 2


def test_an_old_event_claimed_again_does_not_count_backwards() -> None:
    """A retried event (a low id) after newer ones: the distance is never negative."""
    arrivals = gauge()
    arrivals.after_claim(started=0.0, wakes=0, found=1, newest=500)
    assert arrivals.after_claim(started=0.001, wakes=0, found=1, newest=20) == 1
    assert arrivals.after_claim(started=0.002, wakes=0, found=1, newest=505) == 5


def test_with_linger_off_only_what_a_claim_found_counts() -> None:
    arrivals = Arrivals(min_events=4, linger_seconds=0.0)
    arrivals.after_claim(started=0.0, wakes=0, found=1, newest=1)
    assert arrivals.after_claim(started=0.001, wakes=50, found=1, newest=51) == 1
