"""Handlers that take many events at once (worker/pipeline/batches.py): which events of a
claim they get, and how their results stand in for the one-event calls
(worker/pipeline/handling.py), on a batch that needs no database."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import anyio
import pytest

from worker.db.outbox import Batch
from worker.errors import RetryLater
from worker.events import Event
from worker.logs import get_logger
from worker.metrics import Metrics
from worker.pipeline.batches import batchable
from worker.pipeline.handlers import Registry
from worker.pipeline.handling import HandlerRunner
from worker.pipeline.turns import in_turns
from worker.settings import PipelineSettings

NOW = datetime(2026, 12, 5, tzinfo=UTC)


def event(event_id: int, position: str, user: str, new: str = "created") -> Event:
    old = None if new == "created" else "created"
    return Event(event_id, "position", position, user, "BTCUSDT", NOW, old, new)


def created(e: Event) -> bool:
    return e.new_status == "created"


class Recorder:
    """A batch handler and its one-event twin, recording what each was given."""

    def __init__(self, results: Mapping[str, Exception | None] | None = None) -> None:
        self.batches: list[list[int]] = []
        self.one: list[int] = []
        self.results = results

    async def many(self, events: Sequence[Event]) -> dict[int, Exception | None]:
        self.batches.append([e.event_id for e in events])
        if self.results is None:
            return {e.event_id: None for e in events}
        known = self.results
        return {e.event_id: known[e.position_id] for e in events if e.position_id in known}

    async def handle(self, e: Event) -> None:
        self.one.append(e.event_id)


class Deferring(Batch):
    """A claim that needs no database; it records what it defers."""

    deferred: list[int]

    async def defer(self, event_id: int, delay: float, reason: str) -> None:
        self.deferred.append(event_id)


def claim() -> Deferring:
    b = Deferring(cast(Any, None), [], 0, 0, False, touch_every=1e9)
    b.deferred = []
    return b


def runner(registry: Registry, **pipeline: Any) -> HandlerRunner:
    cfg = PipelineSettings(**pipeline)
    return HandlerRunner(registry, cfg, metrics=Metrics(), log=get_logger("test"))


def test_only_each_positions_first_event_and_at_most_per_user_of_one_users() -> None:
    registry = Registry()
    rec = Recorder()
    registry.add("enter", created, rec.handle, slow=True, batch=rec.many)
    items = [
        event(1, "a1", "A"),
        event(2, "a1", "A", "failed"),  # a later event of a1: never in a batch
        event(3, "a2", "A"),
        event(4, "a3", "A"),
        event(5, "b1", "B"),
        event(6, "c1", "C", "open"),  # the first of its position, but not matched
    ]
    handler = registry.handlers[0]
    events, beyond = batchable(handler, in_turns(items), per_user=2)
    assert [e.event_id for e in events] == [1, 5, 3]  # in turns: A's 1st, B's 1st, A's 2nd
    assert beyond == ["a3"]  # A's third: the next claim's
    events, beyond = batchable(handler, in_turns(items), per_user=0)
    assert [e.event_id for e in events] == [1, 5, 3, 4] and beyond == []


@pytest.mark.anyio
async def test_a_batch_result_stands_in_for_the_one_event_call() -> None:
    """Events with a result are not handled again; a failure in its result is the event's
    (deferred here); the events the batch left out are handled one by one."""
    rec = Recorder({"a1": None, "b1": RetryLater(5.0, "exchange unavailable")})
    registry = Registry()
    registry.add("enter", created, rec.handle, slow=True, batch=rec.many)
    b = claim()
    items = [event(1, "a1", "A"), event(2, "b1", "B"), event(3, "c1", "C")]
    with anyio.fail_after(5):
        handled = await runner(registry).run(b, items)
    assert rec.batches == [[1, 2, 3]]
    assert rec.one == [3]  # c1 had no result: one by one
    assert b.deferred == [2]
    assert handled == 2


@pytest.mark.anyio
async def test_a_batch_that_raises_leaves_every_event_to_the_one_event_calls() -> None:
    rec = Recorder()

    async def broken(events: Sequence[Event]) -> dict[int, Exception | None]:
        raise RuntimeError("the batch's connection broke")

    registry = Registry()
    registry.add("enter", created, rec.handle, slow=True, batch=broken)
    with anyio.fail_after(5):
        handled = await runner(registry).run(claim(), [event(1, "a1", "A"), event(2, "b1", "B")])
    assert handled == 2
    assert sorted(rec.one) == [1, 2]


@pytest.mark.anyio
async def test_batch_handlers_off_handles_every_event_one_by_one() -> None:
    rec = Recorder()
    registry = Registry()
    registry.add("enter", created, rec.handle, slow=True, batch=rec.many)
    with anyio.fail_after(5):
        await runner(registry, batch_handlers=False).run(
            claim(), [event(1, "a1", "A"), event(2, "b1", "B")]
        )
    assert rec.batches == [] and sorted(rec.one) == [1, 2]


@pytest.mark.anyio
async def test_a_users_positions_beyond_their_share_of_the_batch_go_to_the_next_claim() -> None:
    """A's six entries and B's one, user_concurrency 2: A's first two and B's go in the batch,
    A's other four are neither batched nor handled one by one: the claim leaves them."""
    rec = Recorder()
    registry = Registry()
    registry.add("enter", created, rec.handle, slow=True, batch=rec.many)
    items = [event(i, f"a{i}", "A") for i in range(1, 7)] + [event(7, "b1", "B")]
    b = claim()
    with anyio.fail_after(5):
        handled = await runner(registry, user_concurrency=2).run(b, items)
    assert rec.batches == [[1, 7, 2]] and rec.one == []
    assert (handled, b.left) == (3, 4)
