"""A drainer whose claim found nothing it may take (every pending event another claim's)
waits: for a batch of its process releasing events or a new position's notification, but
not before what that claim cost says (``least``), nor past ``pause`` without either; a stop
ends the wait at once."""

from __future__ import annotations

import time
from typing import Any, cast

import anyio
import pytest
import structlog

from worker.metrics import Metrics
from worker.pipeline.dispatcher import Dispatcher
from worker.pipeline.handlers import Registry
from worker.settings import PipelineSettings, StreamSettings

pytestmark = pytest.mark.anyio

LEAST = 0.15
PAUSE = 30.0  # far longer than any run of these tests: the wait must end before it


def dispatcher() -> Dispatcher:
    return Dispatcher(
        cast(Any, None),
        cast(Any, None),
        Registry(),
        pipeline=PipelineSettings(),
        streams=StreamSettings(),
        metrics=Metrics(),
        log=structlog.get_logger(),
    )


async def waited(d: Dispatcher, pause: float, least: float, then: str) -> float:
    """Seconds ``d._wait_busy(pause, least)`` took, ``then`` ("release", "new", "stop" or
    "") done as soon as the drainer waits."""
    took = 0.0

    async def wait() -> None:
        nonlocal took
        start = time.monotonic()
        await d._wait_busy(pause, least)
        took = time.monotonic() - start

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            while d.schedule.busy.count == 0:  # the drainer is waiting
                await anyio.lowlevel.checkpoint()
            if then == "release":
                d._release()
            elif then == "new":  # the listener read a new position's notification
                d.new_position()
            elif then == "stop":
                d.stop()
    assert d.schedule.busy.count == 0
    return took


async def test_a_release_ends_the_wait_but_not_before_what_the_claim_cost() -> None:
    took = await waited(dispatcher(), PAUSE, LEAST, "release")
    assert LEAST <= took < PAUSE / 2


async def test_a_release_ends_the_wait_at_once_when_the_claim_was_cheap() -> None:
    took = await waited(dispatcher(), PAUSE, 0.0, "release")
    assert took < PAUSE / 2


async def test_a_new_position_ends_the_wait_but_not_before_what_the_claim_cost() -> None:
    took = await waited(dispatcher(), PAUSE, LEAST, "new")
    assert LEAST <= took < PAUSE / 2


async def test_without_a_release_the_wait_lasts_its_pause() -> None:
    took = await waited(dispatcher(), LEAST, 0.0, "")
    assert took >= LEAST


async def test_a_stop_ends_the_wait_at_once() -> None:
    took = await waited(dispatcher(), PAUSE, PAUSE, "stop")
    assert took < PAUSE / 2
