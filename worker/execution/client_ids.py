"""Client order ids, and which order rows are the worker's own. Pure: no I/O."""

from __future__ import annotations

import uuid
from typing import Final, Literal

Purpose = Literal["entry", "exit", "scale_in", "scale_out", "stop_loss", "take_profit"]
_CODES: Final = {
    "entry": "e",
    "exit": "x",
    "scale_in": "i",
    "scale_out": "o",
    "stop_loss": "s",
    "take_profit": "t",
}


def client_order_id(order_id: uuid.UUID | str, purpose: str) -> str:
    """The client order id of the worker's order row ``order_id``: ``pw-<purpose code><the
    row's uuid in 32 hex digits>``, 36 characters (Binance allows ``^[a-zA-Z0-9-_]{1,36}$``).

    Unique by construction: the uuid is the row's primary key, drawn by the worker
    (``uuid4``), never by whoever else may write ``orders`` or ``positions``. The same intent
    always gets the same id: the row is committed before the order is sent, so a retry after
    a crash looks the order up by this id before ever sending it again.
    """
    return f"pw-{_CODES[purpose]}{uuid.UUID(str(order_id)).hex}"


def oco_list_id(stop_order_id: uuid.UUID | str) -> str:
    """The client id of the OCO list whose stop leg is the order row ``stop_order_id``:
    ``pw-l<the stop leg's uuid in 32 hex digits>`` (one list per stop leg; ``l`` is no
    purpose code, so a list id never equals an order's id), 36 characters."""
    return f"pw-l{uuid.UUID(str(stop_order_id)).hex}"


def is_worker_order(order_id: uuid.UUID | str, purpose: str, client_id: str | None) -> bool:
    """Whether an order row is the worker's own: its client id is exactly the one
    :func:`client_order_id` gives a row of this id and purpose. Any other row (a user's
    record without a client id, a row written by hand or forged) is never sent, cancelled,
    driven, counted in a position's figures or taken as an OCO partner. The SQL twin of this
    test is the view ``worker_orders`` that ``worker/db/execution.sql`` reads orders through."""
    if purpose not in _CODES or not isinstance(client_id, str):
        return False
    try:
        return client_id == client_order_id(order_id, purpose)
    except ValueError:  # not a uuid
        return False
