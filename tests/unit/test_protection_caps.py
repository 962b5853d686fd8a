"""Protection under the exchange's caps, pure: whether the exchange has room for a
position's OCO (filters.md MAX_NUM_ALGO_ORDERS / MAX_NUM_ORDER_LISTS), what a refusal for
want of room teaches, where a position's protection stands, and the worker-side trigger."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from tests.execution_support import order_row
from worker.exchanges.filters import SymbolRules
from worker.execution.client_ids import Purpose
from worker.execution.protection_plan import (
    Placement,
    Slots,
    is_cap_rejection,
    placement,
    protection_state,
    refusal_caps,
    slots_of,
)
from worker.execution.rows import Order, Position
from worker.execution.watcher import trigger_of

D = Decimal
SL, TP = D("90"), D("130")
BOTH = ["stop_loss", "take_profit"]
FULL_ALGO = "no room on the exchange: MAX_NUM_ALGO_ORDERS (5 open on the symbol) reached"
FULL_LISTS = "no room on the exchange: MAX_NUM_ORDER_LISTS (20 open on the symbol) reached"


def rules(algo: int = 5, lists: int = 20) -> SymbolRules:
    return SymbolRules("BTCUSDT", "BTC", "USDT", D("0.01"), D("0.00001"), D(0), D(0), D(5),
                       max_algo_orders=algo, max_order_lists=lists)  # fmt: skip


@pytest.mark.parametrize(
    ("kinds", "side", "algo", "lists", "expected"),
    [
        (BOTH, "sell", 0, 0, Placement("exchange")),
        (BOTH, "sell", 3, 1, Placement("exchange")),  # 2 free: a stop-market pair
        (BOTH, "sell", 4, 2, Placement("exchange", maker_take_profit=True)),  # 1 free
        (BOTH, "buy", 4, 2, Placement("worker", reason=FULL_ALGO)),  # no LIMIT_MAKER below
        (BOTH, "sell", 5, 3, Placement("worker", reason=FULL_ALGO)),
        (BOTH, "sell", 0, 20, Placement("worker", reason=FULL_LISTS)),
        (["stop_loss"], "sell", 4, 2, Placement("exchange")),
        (["take_profit"], "buy", 5, 2, Placement("worker", reason=FULL_ALGO)),
    ],
)
def test_placement_against_the_caps(
    kinds: list[str], side: str, algo: int, lists: int, expected: Placement
) -> None:
    slots = slots_of(algo, lists, rules())
    assert placement(kinds, "sell" if side == "sell" else "buy", slots) == expected


def test_no_cap_in_exchange_info_is_no_limit() -> None:
    slots = slots_of(1000, 1000, rules(0, 0))
    assert slots == Slots(1000, 1000, None, None)
    assert placement(BOTH, "buy", slots) == Placement("exchange")


def test_a_refusal_lowers_the_cap_to_what_was_in_use() -> None:
    """Two orders the worker does not count (the user's own) fill the cap: refused at 2
    algo orders in use, no OCO is tried again until fewer are in use."""
    learnt = refusal_caps(2, 1, "Filter failure: MAX_NUM_ALGO_ORDERS")
    assert learnt == Slots(2, 1, 2, None)
    assert placement(BOTH, "sell", slots_of(2, 1, rules(), learnt)).mode == "worker"
    assert placement(BOTH, "sell", slots_of(0, 0, rules(), learnt)) == Placement("exchange")
    # refused with none of the worker's own in use: the cap is what the others hold
    nothing = refusal_caps(0, 0, "Filter failure: MAX_NUM_ALGO_ORDERS")
    assert placement(["stop_loss"], "sell", slots_of(0, 0, rules(), nothing)).mode == "worker"
    lists = refusal_caps(2, 1, "Filter failure: MAX_NUM_ORDER_LISTS")
    assert slots_of(2, 1, rules(), lists) == Slots(2, 1, 5, 1)


@pytest.mark.parametrize(
    ("code", "msg", "expected"),
    [
        (-2010, "Filter failure: MAX_NUM_ALGO_ORDERS", True),
        (-1013, "Filter failure: MAX_NUM_ALGO_ORDERS", True),
        (-1013, "Filter failure: MAX_NUM_ORDER_LISTS", True),
        (-1013, "Filter failure: EXCHANGE_MAX_NUM_ALGO_ORDERS", True),
        (-1013, "Filter failure: LOT_SIZE", False),
        (-2010, "Account has insufficient balance for requested action.", False),
        (None, "filter: MAX_NUM_ALGO_ORDERS", False),  # a local pre-check is not the exchange
    ],
)
def test_cap_rejections(code: int | None, msg: str, expected: bool) -> None:
    assert is_cap_rejection(code, msg) is expected


def o(purpose: Purpose, status: str = "filled") -> Order:
    return order_row(purpose, status, stop_price={"stop_loss": SL, "take_profit": TP}.get(purpose))


@pytest.mark.parametrize(
    ("orders", "stop", "take", "expected"),
    [
        ([o("entry"), o("stop_loss", "submitted"), o("take_profit", "submitted")], SL, TP,
         "exchange"),
        ([o("entry"), o("stop_loss", "created"), o("take_profit", "created")], SL, TP, None),
        ([o("entry"), o("stop_loss", "cancelled"), o("take_profit", "cancelled")], SL, TP,
         "worker"),
        ([o("entry"), o("stop_loss", "failed"), o("take_profit", "failed")], SL, TP, "worker"),
        ([o("entry"), o("stop_loss", "submitted")], SL, None, "exchange"),
        ([o("entry"), o("stop_loss", "submitted")], SL, TP, "worker"),
        ([o("entry")], None, None, None),  # nothing asked for
        ([], SL, TP, None),  # nothing entered
        # protection of an earlier holding does not count
        ([o("entry"), o("stop_loss", "submitted"), o("take_profit", "submitted"),
          o("scale_in")], SL, TP, "worker"),
    ],
)  # fmt: skip
def test_protection_state(
    orders: list[Order], stop: Decimal | None, take: Decimal | None, expected: str | None
) -> None:
    assert protection_state(orders, stop, take) == expected


def position(**fields: object) -> Position:
    values: dict[str, object] = {
        "id": uuid.uuid4(), "user_id": uuid.uuid4(), "symbol": "BTCUSDT", "side": "long",
        "status": "monitoring", "requested_quantity": D("0.5"), "requested_quote": None,
        "limit_price": None, "stop_loss_price": SL, "take_profit_price": TP,
        "max_loss_usdt": None, "is_paper_trade": False, "held_quantity": D("0.5"),
        "entry_quantity": D("0.5"), "entry_value": D("50"), "account_id": None,
        "protection": "worker",
    }  # fmt: skip
    return Position(**{**values, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "price", "expected"),
    [
        ({}, D("100"), None),
        ({}, D("90"), "stop_loss"),
        ({}, D("131"), "take_profit"),
        ({"max_loss_usdt": D("2")}, D("95.5"), "max_loss"),  # 50/0.5 - 2/0.5 = 96
        ({"side": "short", "stop_loss_price": D("110"), "take_profit_price": D("80")},
         D("111"), "stop_loss"),
        ({"side": "short", "stop_loss_price": D("110"), "take_profit_price": D("80")},
         D("79"), "take_profit"),
    ],
)  # fmt: skip
def test_worker_side_trigger(fields: dict[str, object], price: Decimal, expected: str) -> None:
    assert trigger_of(position(**fields), price) == expected
