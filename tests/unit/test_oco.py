"""OCO pairs: ``protection_plan.oco_partner`` (which protective rows were created as one list),
``OcoRequest`` validation, and the list client id."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.execution_support import order_row
from worker.exchanges.base import OcoRequest
from worker.execution.client_ids import Purpose, client_order_id, oco_list_id
from worker.execution.protection_plan import oco_partner
from worker.execution.rows import Order

D = Decimal
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(n: int, purpose: Purpose, at: datetime = T0, qty: str = "0.5") -> Order:
    return order_row(purpose, "created", id=uuid.UUID(int=n), created_at=at, quantity=D(qty))


def test_legs_created_together_are_partners() -> None:
    sl, tp = row(1, "stop_loss"), row(2, "take_profit")
    rows = [row(0, "entry", T0 - timedelta(seconds=1)), sl, tp]
    assert oco_partner(rows, sl) is tp
    assert oco_partner(rows, tp) is sl


@pytest.mark.parametrize(
    "other",
    [
        row(2, "take_profit", T0 + timedelta(microseconds=1)),  # its own transaction
        row(2, "take_profit", qty="0.3"),  # another size
        row(2, "stop_loss"),  # the same kind
        row(2, "exit"),  # not protective
    ],
)
def test_no_partner(other: Order) -> None:
    sl = row(1, "stop_loss")
    assert oco_partner([sl, other], sl) is None


def test_an_entry_has_no_partner() -> None:
    entry = row(1, "entry")
    assert oco_partner([entry, row(2, "take_profit")], entry) is None


def oco(side: Any = "sell", stop: str = "90", take: str = "130", **kw: Any) -> OcoRequest:
    ids = {"list_id": "l-1", "stop_id": "s-1", "take_id": "t-1", **kw}
    return OcoRequest(
        "BTCUSDT", side, D("0.5"), ids["list_id"], ids["stop_id"], D(stop), ids["take_id"], D(take)
    )


def test_valid_requests() -> None:
    assert oco().take_profit_price == D("130")
    assert oco("buy", stop="130", take="90").stop_price == D("130")


@pytest.mark.parametrize(
    ("args", "kw"),
    [
        (("sell", "130", "90"), {}),  # a long's take-profit below its stop
        (("buy", "90", "130"), {}),  # a short's take-profit above its stop
        (("hold", "90", "130"), {}),
        (("sell", "90", "130"), {"take_id": "s-1"}),  # one id for both legs
        (("sell", "90", "130"), {"list_id": "bad id!"}),
        (("sell", "0", "130"), {}),
    ],
)
def test_invalid_requests(args: tuple[str, str, str], kw: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="invalid OCO request"):
        oco(*args, **kw)


def test_list_client_id_is_the_stop_legs_uuid() -> None:
    stop = uuid.uuid4()
    list_id = oco_list_id(stop)
    assert list_id == f"pw-l{stop.hex}" == oco_list_id(str(stop))
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,36}", list_id)
    assert len(list_id) == 36
    # never one of the legs' ids, nor another list's
    assert list_id not in {client_order_id(stop, p) for p in ("stop_loss", "take_profit")}
    assert oco_list_id(uuid.uuid4()) != list_id
    request = oco(list_id=list_id, stop_id=client_order_id(stop, "stop_loss"))
    assert request.list_client_order_id == list_id  # passes the request's own checks
