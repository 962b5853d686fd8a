"""Synchronous condition waits for tests (no fixed sleeps: poll a condition, with a deadline).

A helper module, not a test module: its name does not match pytest's ``test_*.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T | None], timeout: float, interval: float = 0.05) -> T:
    """Call ``check()`` until it returns a truthy value (never None, then), and return that
    value; raise TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)
