"""worker/pipeline/outages.py: the outages the dispatcher waits out, with made-up times."""

from __future__ import annotations

import random

import pytest

from worker.pipeline.outages import DISPATCHER, Outages


def book() -> Outages:
    return Outages(cap=0.4, rng=random.Random(3))


def test_the_first_sign_starts_an_outage_and_later_ones_join_it() -> None:
    outages = book()
    state, started = outages.met("database", "execution_entry", now=10.0)
    assert started and state.started == 10.0
    again, started = outages.met("database", DISPATCHER, now=11.0)
    assert again is state and not started
    assert state.met_by == {"execution_entry", DISPATCHER}


def test_each_failed_call_backs_off_longer_up_to_the_cap() -> None:
    outages = book()
    state, _ = outages.met("redis", "notify", now=0.0)
    retry_at = []
    for _ in range(6):
        outages.call_failed(state, now=0.0)
        retry_at.append(state.retry_at)
    ceilings = [min(0.4, 0.1 * 2 ** (n - 1)) for n in range(1, 7)]
    assert all(c / 2 <= r <= c for r, c in zip(retry_at, ceilings, strict=True))
    assert state.failed_calls == 6


@pytest.mark.parametrize(
    ("handler", "now", "waiting"),
    [
        ("execution_entry", 0.01, True),  # met it, backoff not over
        ("execution_entry", 1.0, False),  # its backoff ran out: call it again
        ("audit_log", 0.01, False),  # never met it: called as usual
    ],
)
def test_handlers_that_met_an_outage_wait_until_its_backoff_runs_out(
    handler: str, now: float, waiting: bool
) -> None:
    outages = book()
    state, _ = outages.met("database", "execution_entry", now=0.0)
    outages.call_failed(state, now=0.0)  # retry_at in 0.05..0.1
    assert (outages.waiting_out(handler, now) is state) == waiting
    assert outages.retry_in(state, now) == max(state.retry_at - now, 0.0)


def test_a_handlers_success_ends_what_it_met() -> None:
    outages = book()
    outages.met("database", "execution_entry", now=0.0)
    outages.met("redis", "notify", now=0.0)
    assert [s.target for s in outages.succeeded("execution_entry")] == ["database"]
    assert list(outages.by_target) == ["redis"]


def test_a_commit_ends_only_what_the_dispatcher_alone_met() -> None:
    outages = book()
    outages.met("redis", DISPATCHER, now=0.0)
    outages.met("database", DISPATCHER, now=0.0)
    outages.met("database", "execution_entry", now=0.0)
    assert [s.target for s in outages.succeeded(DISPATCHER)] == ["redis"]
    assert outages.by_target["database"].met_by == {"execution_entry"}
    assert [s.target for s in outages.succeeded("execution_entry")] == ["database"]
    assert outages.by_target == {}
