"""What every part of the engine is given (:class:`Context`), and the errors they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from worker.errors import WorkerError
from worker.exchanges.base import ExchangeError
from worker.execution.routing import ExchangeRouter
from worker.settings import RiskSettings


class CrashPoint(Protocol):
    """Called with the name of each step the engine reaches (``<purpose>.committed``,
    ``.sent``, ``.recording``, ``.settled``, ``exit.protection_cancelled``), so that a
    recovery test can kill the process right there (``worker/testing/crashpoints.py``)."""

    def __call__(self, point: str) -> None: ...


def no_crash_point(point: str) -> None:
    """The engine's default: every step runs straight through."""


@dataclass(frozen=True, slots=True)
class Context:
    router: ExchangeRouter  # which exchange a position trades on
    log: Any
    resend_after: int  # lookups an order is missing before it is sent again
    crash_point: CrashPoint = no_crash_point
    risk: RiskSettings = field(default_factory=RiskSettings)  # defaults; overrides per user
    lost_after_s: float = 300.0  # an acknowledged order unknown this long is lost


class PositionBusy(WorkerError):
    """Another actor holds the position right now; the caller retries later."""


class LookLater(ExchangeError):
    """The exchange does not show all of the order yet: look again on the next pass."""
