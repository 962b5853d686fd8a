"""Fixtures of the chaos scenarios: a fleet of worker processes, and the summary line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.support import Fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    workers = Fleet(tmp_path)
    try:
        yield workers
    finally:
        workers.kill_all()


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Callable[..., str]:
    """Print the scenario's one summary line, whatever the capture mode (``-s`` or not)."""

    def emit(name: str, **figures: Any) -> str:
        line = f"chaos {name}: " + " ".join(f"{k}={v}" for k, v in figures.items())
        with capsys.disabled():
            print(f"\n{line}", flush=True)
        return line

    return emit
