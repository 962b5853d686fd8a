"""The claim floor (worker/pipeline/claim_floor.py): what a claim may skip, and from when."""

from __future__ import annotations

from worker.pipeline.claim_floor import ClaimFloor


def test_a_sighting_becomes_the_floor_only_once_it_has_settled() -> None:
    floor = ClaimFloor(settle=1.0)
    floor.observe(100, full=True, now=0.0)
    assert floor.value == 0  # a transaction open now may still commit an id below 100
    floor.observe(150, full=False, now=0.5)
    assert floor.value == 0
    floor.observe(200, full=False, now=1.0)
    assert floor.value == 100  # the sighting from t=0, not the newer ones
    floor.observe(300, full=False, now=1.5)
    assert floor.value == 100
    floor.observe(400, full=False, now=2.0)
    assert floor.value == 200


def test_claims_that_saw_nothing_leave_the_floor_alone() -> None:
    floor = ClaimFloor(settle=1.0)
    floor.observe(100, full=True, now=0.0)
    floor.observe(None, full=False, now=5.0)
    assert floor.value == 0
    floor.observe(120, full=False, now=6.0)
    assert floor.value == 100


def test_a_full_claim_that_finds_something_below_lowers_the_floor_at_once() -> None:
    """A long transaction's event (or a replayed one) below the floor: claims look from
    there again, and the sightings made above it no longer count."""
    floor = ClaimFloor(settle=1.0)
    floor.observe(100, full=True, now=0.0)
    floor.observe(500, full=False, now=1.0)
    assert floor.value == 100
    floor.observe(60, full=True, now=1.2)
    assert floor.value == 60
    floor.observe(700, full=False, now=2.1)  # the t=1.0 sighting (500) was dropped
    assert floor.value == 60
    floor.observe(800, full=False, now=2.2)  # the full claim's own sighting has settled
    assert floor.value == 60
    floor.observe(900, full=False, now=3.2)
    assert floor.value == 800


def test_only_a_full_claim_may_lower_the_floor() -> None:
    """A claim from the floor cannot see below it; what it reports is at or above it."""
    floor = ClaimFloor(settle=0.0)
    floor.observe(100, full=True, now=0.0)
    floor.observe(200, full=False, now=1.0)
    assert floor.value == 100
    floor.observe(300, full=True, now=2.0)  # nothing below: no reason to lower
    assert floor.value == 200


def test_a_lower_sighting_before_the_candidate_settles_holds_the_floor_below_it() -> None:
    """An event seen pending after the candidate was taken (a late commit, a retry) must not
    end up below the floor when the candidate settles."""
    floor = ClaimFloor(settle=1.0)
    floor.observe(500, full=False, now=0.0)
    floor.observe(450, full=False, now=0.5)
    floor.observe(900, full=False, now=1.0)
    assert floor.value == 450
