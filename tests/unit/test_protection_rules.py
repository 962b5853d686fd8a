"""Which protective orders to place again (worker.execution.protection_plan): pure.

Each case is the orders placed after the entry (the latest holding change)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.execution_support import order_row
from worker.execution.client_ids import Purpose
from worker.execution.protection_plan import protection_plan
from worker.execution.rows import Order

D = Decimal
BOTH = {"stop_loss": D("90"), "take_profit": D("130")}


def order(purpose: Purpose, status: str, qty: str = "0.5", stop: str | None = None) -> Order:
    price = stop or ("90" if purpose == "stop_loss" else "130")
    return order_row(purpose, status, quantity=D(qty), stop_price=D(price))


SL_RESTING = order("stop_loss", "submitted")


@pytest.mark.parametrize(
    ("stops", "orders", "expected"),
    [
        (BOTH, [], ["stop_loss", "take_profit"]),  # never placed (a crash before it was)
        ({"stop_loss": D("90"), "take_profit": None}, [], ["stop_loss"]),
        ({"stop_loss": None, "take_profit": None}, [], []),
        (BOTH, [order("stop_loss", "submitted"), order("take_profit", "created")], []),
        (BOTH, [order("stop_loss", "partially_filled")], ["take_profit"]),
        # cancelled for an exit that then failed, or by the user / the exchange: again
        (BOTH, [order("stop_loss", "cancelled"), order("take_profit", "submitted")], ["stop_loss"]),
        (BOTH, [order("stop_loss", "filled"), order("take_profit", "cancelled")], BOTH.keys()),
        # rejected at this very size and price: it would be rejected again
        (BOTH, [order("stop_loss", "submitted"), order("take_profit", "failed")], []),
        # ... but tried again once the holding or the price changed
        (BOTH, [order("take_profit", "failed", "0.7"), SL_RESTING], ["take_profit"]),
        (BOTH, [order("take_profit", "failed", stop="140")], ["stop_loss", "take_profit"]),
        # only the latest order of a kind counts
        (BOTH, [order("stop_loss", "failed"), order("stop_loss", "cancelled")], BOTH.keys()),
        (BOTH, [order("stop_loss", "cancelled"), order("stop_loss", "failed")], ["take_profit"]),
        # other purposes never count as protection
        (BOTH, [order("scale_out", "filled")], BOTH.keys()),
    ],
)  # fmt: skip
def test_protection_to_place(
    stops: dict[str, Decimal | None], orders: list[Order], expected: Any
) -> None:
    entered = [order("entry", "filled"), *orders]
    _, missing = protection_plan(entered, stops["stop_loss"], stops["take_profit"], D("0.5"))
    assert missing == list(expected)
