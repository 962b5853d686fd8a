"""Named crash points: ``kill -9`` this very process at a chosen step, for recovery tests.

Inert unless the environment variable ``POSITION_WORKER_CRASH_AT`` names a point (read once,
at the first call): ``entry.sent`` kills the process the first time it reaches that point,
``entry.sent:3`` the third time. The kill is SIGKILL, as an OOM kill or a power cut would
be: no ``finally``, no shutdown; PostgreSQL rolls back the open transaction and releases the
process's advisory locks when its connections drop. One ``crash_point_reached`` log line is
written (and flushed) first, so a test can tell this kill from any other death.

The execution engine names its points ``<purpose>.<step>``, ``purpose`` being the order's
(``entry``, ``exit``, ``scale_in``, ``scale_out``, ``stop_loss``, ``take_profit``):

* ``committed``: the order row (the intent, with its client order id) is committed and the
  order is about to be sent; ``send_attempts`` not yet bumped.
* ``sent``: the exchange answered the placement; nothing of the answer is recorded.
* ``recording``: inside the transaction that records the answer (order status, fills),
  before the position's figures; the kill rolls the whole transaction back.
* ``settled``: the order's final outcome, the fills and the position's figures and status
  are committed; the follow-ups are not done (placing stop-loss / take-profit after an
  entry or a scale, cancelling the sibling after a stop filled).

and ``exit.protection_cancelled``: an exit or partial-exit request cancelled the position's
protective orders; the exit order is not recorded yet.
"""

from __future__ import annotations

import os
import signal
from functools import cache

ENV = "POSITION_WORKER_CRASH_AT"

_reached: dict[str, int] = {}


@cache
def _armed() -> tuple[str, int] | None:
    """``(point, nth)`` from the environment, or None (the normal case)."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    point, _, nth = value.partition(":")
    return point, int(nth or "1")


def crashpoint(point: str) -> None:
    """SIGKILL this process if ``point`` is the armed one (and this is its nth time)."""
    armed = _armed()
    if armed is None or armed[0] != point:
        return
    _reached[point] = _reached.get(point, 0) + 1
    if _reached[point] == armed[1]:
        from worker.logs import get_logger

        get_logger("crashpoints").critical("crash_point_reached", point=point, pid=os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)
