"""A batch's positions with a slow handler run at the same time, each one's events in order
(worker/pipeline/handling.py), on a batch that needs no database (every event succeeds)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import anyio
import pytest

from worker.db.outbox import Batch
from worker.events import Event
from worker.logs import get_logger
from worker.metrics import Metrics
from worker.pipeline.handlers import Registry
from worker.pipeline.handling import HandlerRunner
from worker.settings import PipelineSettings

pytestmark = pytest.mark.anyio
NOW = datetime(2026, 12, 5, tzinfo=UTC)


def event(event_id: int, position: str, user: str) -> Event:
    return Event(event_id, "position", position, user, "BTCUSDT", NOW)


def batch() -> Batch:
    return Batch(cast(Any, None), [], 0, 0, False, touch_every=1e9)


def runner(registry: Registry, **pipeline: Any) -> HandlerRunner:
    cfg = PipelineSettings(**pipeline)
    return HandlerRunner(registry, cfg, metrics=Metrics(), log=get_logger("test"))


async def test_two_users_positions_overlap_and_each_positions_events_stay_in_order() -> None:
    """p1's first event waits until p2's has run: one position after another would never
    get there."""
    p2_ran = anyio.Event()
    seen: list[int] = []

    async def handle(e: Event) -> None:
        if e.event_id == 1:
            await p2_ran.wait()
        if e.position_id == "p2":
            p2_ran.set()
        seen.append(e.event_id)

    registry = Registry()
    registry.add("trade", lambda e: True, handle, slow=True)
    items = [event(1, "p1", "A"), event(2, "p1", "A"), event(3, "p2", "B")]
    b = batch()
    with anyio.fail_after(5):
        handled = await runner(registry).run(b, items)
    assert handled == 3 and b.left == 0
    assert seen.index(1) < seen.index(2)  # one position's events in commit order
    assert seen[0] == 3


async def test_one_user_holds_at_most_user_concurrency_slots() -> None:
    running, most = 0, 0
    release = anyio.Event()

    async def handle(e: Event) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        if e.user_id == "B":
            release.set()  # B's position ran while A's were held at their cap
        await release.wait()
        running -= 1

    registry = Registry()
    registry.add("trade", lambda e: True, handle, slow=True)
    items = [event(i, f"a{i}", "A") for i in range(1, 9)] + [event(9, "b", "B")]
    b = batch()
    with anyio.fail_after(5):
        handled = await runner(registry, user_concurrency=2, batch_budget_seconds=0).run(b, items)
    assert handled == 9 and b.left == 0
    assert most <= 3  # two of A's and B's


async def test_past_the_budget_a_positions_later_slow_events_wait_for_the_next_claim() -> None:
    """p1's first request takes the batch past its budget (a clock the test moves): p1's
    next event, quick, still runs; its request after that waits for the next claim
    (``left``), in order. p2's first event runs whatever the time: each position moves on
    by one event at least in every claim."""
    now = [0.0]
    seen: list[int] = []

    async def trade(e: Event) -> None:
        if e.event_id == 1:
            now[0] += 1.0  # a slow exchange
        seen.append(e.event_id)

    async def audit(e: Event) -> None:
        return None

    registry = Registry()
    registry.add("audit", lambda e: True, audit)
    registry.add("trade", lambda e: e.kind == "request", trade, slow=True)
    items = [
        Event(1, "request", "p1", "A", "BTCUSDT", NOW),
        Event(2, "position", "p1", "A", "BTCUSDT", NOW),
        Event(3, "request", "p1", "A", "BTCUSDT", NOW),
        Event(4, "request", "p1", "A", "BTCUSDT", NOW),
        Event(5, "request", "p2", "B", "BTCUSDT", NOW),
    ]
    cfg = PipelineSettings(batch_budget_seconds=0.1)
    b = batch()
    run = HandlerRunner(
        registry, cfg, metrics=Metrics(), log=get_logger("test"), clock=lambda: now[0]
    )
    with anyio.fail_after(5):
        handled = await run.run(b, items)
    assert (handled, b.left) == (3, 1)
    assert sorted(seen) == [1, 5]  # p1's later requests were not handled
    assert sorted(b._done) == [1, 2, 5]  # marked processed: 3 and 4 stay pending

    # without a budget every event runs
    seen.clear()
    now[0] = 0.0
    unbounded = PipelineSettings(batch_budget_seconds=0)
    run = HandlerRunner(
        registry, unbounded, metrics=Metrics(), log=get_logger("test"), clock=lambda: now[0]
    )
    b = batch()
    with anyio.fail_after(5):
        assert await run.run(b, items) == 5
    assert sorted(seen) == [1, 3, 4, 5] and b.left == 0
