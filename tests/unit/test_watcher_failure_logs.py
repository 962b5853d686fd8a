"""The watcher skips one position's failure and logs it: an engine bug with its traceback
(where it happened, not one line), the exchange's trouble in one line."""

from __future__ import annotations

from typing import Any, cast

import psycopg
import pytest
import structlog
from structlog.testing import LogCapture

from worker.exchanges.base import OutcomeUnknown
from worker.execution.engine import Engine
from worker.execution.watcher import Watcher
from worker.settings import ExecutionSettings

pytestmark = pytest.mark.anyio


def watcher_logging_to(capture: LogCapture) -> Watcher:
    log = structlog.wrap_logger(None, processors=[capture], wrapper_class=structlog.BoundLogger)
    # _guarded touches neither the engine nor the pool
    return Watcher(cast(Engine, None), cast(Any, None), None, ExecutionSettings(), log)


async def test_an_engine_bug_is_logged_with_its_traceback() -> None:
    capture = LogCapture()

    async def broken(position_id: str) -> None:
        raise KeyError("held_quantity")

    await watcher_logging_to(capture)._guarded(broken, "p-1")
    [entry] = capture.entries
    assert entry["event"] == "reconcile_failed"
    assert entry["position_id"] == "p-1"
    assert entry["error"] == "KeyError: 'held_quantity'"
    raised = entry["exc_info"]  # the exception itself: the renderer prints its traceback
    assert isinstance(raised, KeyError) and raised.__traceback__ is not None


async def test_an_exchange_error_is_one_line() -> None:
    capture = LogCapture()

    async def timed_out(position_id: str) -> None:
        raise OutcomeUnknown("read timeout")

    await watcher_logging_to(capture)._guarded(timed_out, "p-1")
    [entry] = capture.entries
    assert entry["event"] == "reconcile_exchange_error"
    assert "exc_info" not in entry


async def test_a_deadlock_is_one_line_and_no_outage() -> None:
    """A statement PostgreSQL rolled back for a conflict (40P01) is translated into Conflict
    by _guarded; the pass goes on (the next one looks again), one warning, no traceback."""
    capture = LogCapture()

    async def deadlocked(position_id: str) -> None:
        raise psycopg.errors.DeadlockDetected("deadlock detected")

    await watcher_logging_to(capture)._guarded(deadlocked, "p-1")
    [entry] = capture.entries
    assert entry["event"] == "reconcile_conflict"
    assert entry["log_level"] == "warning"
    assert "deadlock detected" in entry["error"]
    assert "exc_info" not in entry
