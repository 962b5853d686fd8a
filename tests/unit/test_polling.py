"""worker/pipeline/polling.py: when busy and quiet claims switch polling on and off."""

from __future__ import annotations

from worker.pipeline.polling import PollSwitch


def test_polling_starts_after_busy_claims_in_a_row() -> None:
    switch = PollSwitch(start_after=3, end_after=2)
    assert [switch.after_claim(b) for b in (True, True, False, True, True)] == [False] * 5
    assert not switch.on
    assert switch.after_claim(True) and switch.on


def test_one_quiet_claim_does_not_end_polling_two_in_a_row_do() -> None:
    """Sharing the stream, a polling claim may find nothing while events pour in."""
    switch = PollSwitch(start_after=1, end_after=2, on=True)
    assert [switch.after_claim(b) for b in (False, True, False, True)] == [False] * 4
    assert switch.on
    assert not switch.after_claim(False)
    assert switch.after_claim(False) and not switch.on


def test_a_disabled_switch_never_polls() -> None:
    switch = PollSwitch(start_after=1, end_after=1, enabled=False)
    assert not any(switch.after_claim(True) for _ in range(10))
    assert not switch.on


def test_stopping_switches_polling_off_and_says_whether_it_was_on() -> None:
    switch = PollSwitch(start_after=1, end_after=2)
    assert switch.after_claim(True) and switch.on
    assert switch.stop() and not switch.on
    assert not switch.stop()
