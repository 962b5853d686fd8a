"""``protection_plan.protection_plan``: which stop-loss / take-profit orders a live position
needs, after any crash between changing its holding and protecting it. And the crash-point
hook."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal

import pytest

from tests.execution_support import order_row
from worker.execution.client_ids import Purpose
from worker.execution.protection_plan import protection_plan
from worker.execution.rows import Order
from worker.testing import crashpoints

SL, TP = Decimal("90"), Decimal("130")


def o(purpose: Purpose, status: str = "filled") -> Order:
    stop = {"stop_loss": SL, "take_profit": TP}.get(purpose)
    return order_row(purpose, status, stop_price=stop)


@pytest.mark.parametrize(
    ("orders", "stop_loss", "take_profit", "stale", "missing"),
    [
        ([], SL, TP, [], []),  # nothing entered through the engine
        ([o("entry")], SL, TP, [], ["stop_loss", "take_profit"]),
        ([o("entry")], None, TP, [], ["take_profit"]),
        ([o("entry")], None, None, [], []),
        ([o("entry"), o("stop_loss", "submitted")], SL, TP, [], ["take_profit"]),
        ([o("entry"), o("stop_loss", "created")], SL, TP, [], ["take_profit"]),
        ([o("entry"), o("stop_loss", "submitted"), o("take_profit", "submitted")], SL, TP, [], []),
        ([o("entry"), o("stop_loss", "failed"), o("take_profit", "submitted")], SL, TP, [], []),
        (  # scale-in settled, old protection still resting: cancel it, place new
            [o("entry"), o("stop_loss", "submitted"), o("take_profit", "submitted"), o("scale_in")],
            SL,
            TP,
            [1, 2],
            ["stop_loss", "take_profit"],
        ),
        (  # exit request cancelled the protection, then the exit was refused
            [
                o("entry"),
                o("stop_loss", "cancelled"),
                o("take_profit", "cancelled"),
                o("exit", "failed"),
            ],
            SL,
            TP,
            [],
            ["stop_loss", "take_profit"],
        ),
        (  # a scale-out protected again
            [o("entry"), o("stop_loss", "cancelled"), o("scale_out"), o("stop_loss", "submitted")],
            SL,
            None,
            [],
            [],
        ),
    ],
)
def test_protection_plan(
    orders: list[Order],
    stop_loss: Decimal | None,
    take_profit: Decimal | None,
    stale: list[int],
    missing: list[str],
) -> None:
    got_stale, got_missing = protection_plan(orders, stop_loss, take_profit)
    assert [i for i, order in enumerate(orders) if any(order is s for s in got_stale)] == stale
    assert got_missing == missing


def test_crashpoint_is_inert_without_the_environment_variable() -> None:
    assert os.environ.get(crashpoints.ENV) is None
    crashpoints.crashpoint("entry.sent")  # returns: nothing armed


@pytest.mark.parametrize(
    ("armed", "code"),
    [("entry.sent", -9), ("entry.sent:3", -9), ("entry.sent:4", 0), ("exit.sent", 0)],
)
def test_crashpoint_kills_at_the_nth_time_it_is_reached(armed: str, code: int) -> None:
    script = (
        "from worker.testing.crashpoints import crashpoint\n"
        "for _ in range(3): crashpoint('entry.sent')\n"
        "print('survived', flush=True)\n"
    )
    env = {**os.environ, crashpoints.ENV: armed}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == code
    assert ("survived" in done.stdout) == (code == 0)
