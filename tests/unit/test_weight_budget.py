"""The request-weight budget and the REST safety net's plan, pure: which requests leave in
a minute mostly spent (exits always, lookups first to wait), which ``openOrders`` calls cover
an account, and which orders in flight still need a lookup of their own."""

from __future__ import annotations

from decimal import Decimal

import pytest

from worker.exchanges.base import OrderState
from worker.exchanges.binance_answers import rate_limit
from worker.exchanges.budget import (
    ORDERS_ENTRY_SHARE,
    Priority,
    admits,
    priority_of,
    urgent,
    used_now,
    window_left,
)
from worker.execution.reconcile_plan import (
    InFlight,
    due,
    needs_lookup,
    next_full_read,
    open_orders_calls,
)
from worker.pipeline.turns import in_turns

D = Decimal


@pytest.mark.parametrize(
    ("priority", "used", "limit", "admitted"),
    [
        (Priority.LOOKUP, 4199, 6000, True),
        (Priority.LOOKUP, 4200, 6000, False),  # lookups stop at 70 %
        (Priority.ENTRY, 4200, 6000, True),
        (Priority.ENTRY, 5400, 6000, False),  # entries at 90 %
        (Priority.EXIT, 5999, 6000, True),  # exits and cancels: only a 429 stops them
        (Priority.EXIT, 7000, 6000, True),
        (Priority.LOOKUP, 10**6, 0, True),  # no limit known
    ],
)
def test_admission_by_priority(priority: Priority, used: int, limit: int, admitted: bool) -> None:
    assert admits(priority, used, limit) is admitted


def test_the_counter_read_in_an_earlier_window_is_spent_no_more() -> None:
    assert used_now(5000, read_at=120.5, now=179.9) == 5000
    assert used_now(5000, read_at=120.5, now=180.0) == 0  # fixed minute windows
    assert window_left(130.0) == 50.0


def test_priority_is_the_callers_else_the_methods() -> None:
    assert [priority_of(m) for m in ("GET", "POST", "DELETE")] == [
        Priority.LOOKUP,
        Priority.ENTRY,
        Priority.EXIT,
    ]
    with urgent():
        assert priority_of("GET") == Priority.EXIT
        with urgent(Priority.ENTRY):
            assert priority_of("GET") == Priority.ENTRY
        assert priority_of("POST") == Priority.EXIT
    assert priority_of("GET") == Priority.LOOKUP


def test_open_orders_calls_take_the_least_weight() -> None:
    """rest-api.md: openOrders weighs 6 with a symbol, 80 without."""
    assert open_orders_calls({"ETHUSDT", "BTCUSDT"}) == ["BTCUSDT", "ETHUSDT"]
    assert len(open_orders_calls({f"S{i}USDT" for i in range(13)})) == 13  # 78 <= 80
    assert open_orders_calls({f"S{i}USDT" for i in range(14)}) == [None]  # 84 > 80


def test_the_orders_in_flight_are_read_when_an_account_is_next_listed() -> None:
    assert next_full_read(100.0, [], 10.0) == 110.0  # none in flight: one interval on
    assert next_full_read(100.0, [108.0, 104.5], 10.0) == 104.5  # the first account due
    assert next_full_read(100.0, [108.0, 100.0], 10.0) == 100.0  # cannot list: every pass


def test_due() -> None:
    assert due(None, 5.0, 10.0)
    assert not due(0.0, 9.9, 10.0)
    assert due(0.0, 10.0, 10.0)


def order(status: str = "submitted", **fields: object) -> InFlight:
    values: dict[str, object] = {
        "position_id": "p1", "user_id": "u1", "client_order_id": "c1", "symbol": "BTCUSDT",
        "status": status,
        "exchange_status": "NEW", "filled_quantity": D(0), "missing_lookups": 0,
    }  # fmt: skip
    return InFlight(**{**values, **fields})  # type: ignore[arg-type]


def listed(status: str = "NEW", executed: str = "0") -> dict[str, OrderState]:
    return {"c1": OrderState("c1", "1", status, D(executed), D(0))}


@pytest.mark.parametrize(
    ("flight", "view", "lookup"),
    [
        (order(), listed(), False),  # open as recorded: nothing to do
        (order(), {}, True),  # left the open list: filled, cancelled, expired, forgotten
        (order(), listed("PARTIALLY_FILLED", "0.1"), True),  # changed
        (order("partially_filled", exchange_status="PARTIALLY_FILLED", filled_quantity=D("0.1")),
         listed("PARTIALLY_FILLED", "0.1"), False),
        (order(missing_lookups=2), listed(), True),  # back in sight: reset the count
        (order(), None, False),  # not listed this pass: left for the next listing
        (order("created", exchange_status=None), None, True),  # still to be sent
        (order("created", exchange_status=None), listed(), True),
    ],
)  # fmt: skip
def test_needs_lookup(flight: InFlight, view: dict[str, OrderState] | None, lookup: bool) -> None:
    assert needs_lookup(flight, view) is lookup


def test_an_accounts_orders_keep_a_fifth_for_exits() -> None:
    """ORDERS 50 per 10 s: entries stop at 40, exits and protective orders never."""
    assert admits(Priority.ENTRY, 39, 50, ORDERS_ENTRY_SHARE)
    assert not admits(Priority.ENTRY, 40, 50, ORDERS_ENTRY_SHARE)
    assert admits(Priority.EXIT, 49, 50, ORDERS_ENTRY_SHARE)


def test_the_limits_are_read_from_exchange_info() -> None:
    info = {
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
             "limit": 6000},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 50},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 160000},
        ]
    }  # fmt: skip
    assert (rate_limit(info, "REQUEST_WEIGHT"), rate_limit(info, "ORDERS")) == (6000, 50)
    assert rate_limit({}, "ORDERS") is None


def test_the_positions_to_drive_go_in_turns_across_users_oldest_first() -> None:
    """One user's many changed orders cannot hold up another's (issue 20: 210 resting
    orders of one user held another user's fill for minutes)."""
    flood = [order(position_id=f"a{i}", user_id="A") for i in range(1000)]
    late = order(position_id="b1", user_id="B")
    drive = [
        run.position_id for run in in_turns([*flood, late, order(position_id="a0", user_id="A")])
    ]
    assert drive[:3] == ["a0", "b1", "a1"]  # B's one comes in the first turn
    assert len(drive) == 1001 and drive[3:] == [f"a{i}" for i in range(2, 1000)]
    nothing: list[InFlight] = []
    assert [run.position_id for run in in_turns(nothing)] == []
