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


def test_one_event_of_each_position_and_at_most_per_user_of_one_users() -> None:
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
    events, beyond = batchable(handler, in_turns(items), 2, registry, {})
    assert [e.event_id for e in events] == [1, 5, 3]  # in turns: A's 1st, B's 1st, A's 2nd
    assert beyond == {"a3": 0}  # A's third: the next claim's
    events, beyond = batchable(handler, in_turns(items), 0, registry, {})
    assert [e.event_id for e in events] == [1, 5, 3, 4] and beyond == {}


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


def status_is(status: str) -> Any:
    return lambda e: e.new_status == status


@pytest.mark.anyio
async def test_a_later_event_is_batched_once_only_quick_or_batched_handlers_stand_before_it() -> (
    None
):
    """An exit asked while its position's entry events are still in the outbox: the quick
    audit log does not hold it back, the AI monitoring start batched ahead of it does not
    either, once it succeeded; a deferred one does, and so does a slow handler that ran in no
    batch. The audit log still sees each position's events in order."""
    audited: list[int] = []

    async def audit(e: Event) -> None:
        audited.append(e.event_id)

    ai = Recorder({"p1": None, "p2": RetryLater(5.0, "AI service busy"), "p3": None})
    exits = Recorder()
    lone = Recorder()
    registry = Registry()
    registry.add("audit_log", lambda e: True, audit)
    registry.add("ai_monitoring", status_is("open"), ai.handle, slow=True, batch=ai.many)
    registry.add("lone", status_is("stopping"), lone.handle, slow=True)  # no batch form
    registry.add("exit", status_is("closing"), exits.handle, slow=True, batch=exits.many)
    items = [
        event(1, "p1", "A", "submitting"),
        event(2, "p2", "B", "submitting"),
        event(3, "p3", "C", "open"),
        event(4, "p1", "A", "open"),
        event(5, "p2", "B", "open"),
        event(6, "p4", "D", "stopping"),
        event(7, "p1", "A", "closing"),
        event(8, "p2", "B", "closing"),
        event(9, "p3", "C", "closing"),
        event(10, "p4", "D", "closing"),
        event(11, "p5", "E", "closing"),
    ]
    b = claim()
    with anyio.fail_after(5):
        handled = await runner(registry, max_attempts=5).run(b, items)
    assert ai.batches == [[4, 5, 3]]
    assert exits.batches == [[7, 9, 11]]  # p2's waits for its monitoring; p4's for "lone"
    assert exits.one == [10] and lone.one == [6]  # one by one, in their positions' order
    assert audited.index(1) < audited.index(4) < audited.index(7)
    assert audited.index(2) < audited.index(5) and 8 not in audited  # p2 stopped at 5
    assert b.deferred == [5]
    assert handled == 9


@pytest.mark.anyio
async def test_a_users_later_events_beyond_their_share_wait_from_there() -> None:
    """A's three positions each have an audited event, then an exit; user_concurrency 2:
    two exits go in the batch; the third position's first event is handled and its exit is
    left for the next claim, neither batched nor handled one by one."""
    exits = Recorder()
    registry = Registry()
    registry.add("audit_log", lambda e: True, Recorder().handle)
    registry.add("exit", status_is("closing"), exits.handle, slow=True, batch=exits.many)
    items = [event(i, f"a{i}", "A", "open") for i in (1, 2, 3)]
    items += [event(i + 3, f"a{i}", "A", "closing") for i in (1, 2, 3)]
    b = claim()
    with anyio.fail_after(5):
        handled = await runner(registry, user_concurrency=2).run(b, items)
    assert exits.batches == [[4, 5]] and exits.one == []
    assert (handled, b.left) == (5, 1)
