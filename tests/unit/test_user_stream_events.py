"""The user data stream's pure parts: signing a WebSocket API request (the docs' own
example), reading executionReports, the reconnect backoff."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from worker.exchanges.signing import Credentials
from worker.exchanges.user_stream import (
    OrderUpdate,
    StreamEnded,
    parse_event,
    reconnect_delay,
    signed,
)

D = Decimal


def test_signing_follows_the_docs_hmac_example() -> None:
    """web-socket-api.md "SIGNED request example (HMAC)", the ASCII example, step 2."""
    credentials = Credentials.of(
        "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A",
        "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j",
    )
    params = {
        "symbol": "BTCUSDT", "side": "SELL", "type": "LIMIT", "timeInForce": "GTC",
        "quantity": "0.01000000", "price": "52000.00", "recvWindow": 100,
        "timestamp": 1645423376532,
        "apiKey": "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A",
    }  # fmt: skip
    assert signed(credentials, params)["signature"] == (
        "aa1b5712c094bc4e57c05a1a5c1fd8d88dcd628338ea863fec7b88e59fe2db24"
    )


def report(**fields: Any) -> dict[str, Any]:
    """user-data-stream.md "Order Update", the docs' example with ``fields`` over it."""
    event = {
        "e": "executionReport", "E": 1499405658658, "s": "ETHBTC",
        "c": "mUvoqJxFIILMdfAW5iGSOW", "S": "BUY", "o": "LIMIT", "f": "GTC",
        "q": "1.00000000", "p": "0.10264410", "P": "0.00000000", "F": "0.00000000", "g": -1,
        "C": "", "x": "NEW", "X": "NEW", "r": "NONE", "i": 4293153, "l": "0.00000000",
        "z": "0.00000000", "L": "0.00000000", "n": "0", "N": None, "T": 1499405658657,
        "t": -1, "v": 3, "I": 8641984, "w": True, "m": False, "M": False, "O": 1499405658657,
        "Z": "0.00000000", "Y": "0.00000000", "Q": "0.00000000", "W": 1499405658657,
        "V": "NONE",
    }  # fmt: skip
    return {"subscriptionId": 0, "event": {**event, **fields}}


def test_a_new_order_has_no_fill() -> None:
    update = parse_event(report())
    assert isinstance(update, OrderUpdate)
    assert (update.symbol, update.execution, update.client_order_id) == (
        "ETHBTC", "NEW", "mUvoqJxFIILMdfAW5iGSOW",
    )  # fmt: skip
    assert (update.state.status, update.state.exchange_order_id, update.state.fills) == (
        "NEW", "4293153", (),
    )  # fmt: skip


def test_a_trade_carries_its_fill_and_the_totals_as_decimals() -> None:
    trade = {"x": "TRADE", "X": "PARTIALLY_FILLED", "l": "0.4", "z": "0.6", "L": "0.1026",
             "n": "0.0004", "N": "ETH", "t": 77, "T": 5, "Z": "0.06157"}  # fmt: skip
    update = parse_event(report(**trade))
    assert isinstance(update, OrderUpdate)
    [fill] = update.state.fills
    assert (fill.trade_id, fill.price, fill.qty, fill.commission, fill.commission_asset) == (
        "77", D("0.1026"), D("0.4"), D("0.0004"), "ETH",
    )  # fmt: skip
    assert fill.time_ms == 5
    assert (update.state.executed_qty, update.state.cumulative_quote) == (D("0.6"), D("0.06157"))
    assert update.state.is_open


def test_a_cancel_is_of_the_original_client_id() -> None:
    """``C``: "the ID of the order being canceled" (``c`` is the cancel's own)."""
    update = parse_event(report(x="CANCELED", X="CANCELED", c="web_1", C="pw-e1"))
    assert isinstance(update, OrderUpdate)
    assert update.client_order_id == "pw-e1"
    assert update.state.is_final


@pytest.mark.parametrize("kind", ["eventStreamTerminated", "serverShutdown"])
def test_the_end_of_a_stream_is_told(kind: str) -> None:
    assert parse_event({"event": {"e": kind, "E": 1}}) == StreamEnded(kind)


@pytest.mark.parametrize(
    "frame",
    [{"event": {"e": "outboundAccountPosition", "B": []}}, {"event": {"e": "listStatus"}}],
)
def test_what_the_worker_does_not_use_is_none(frame: dict[str, Any]) -> None:
    assert parse_event(frame) is None


@pytest.mark.parametrize(
    "frame", [[], {"result": {}}, report(z="not a number"), report(i=None, x="TRADE", t="x")]
)
def test_an_unreadable_frame_is_a_value_error(frame: Any) -> None:
    with pytest.raises(ValueError):
        parse_event(frame)


def test_reconnects_back_off_to_the_ceiling() -> None:
    delays = [reconnect_delay(n, 30.0) for n in range(10)]
    assert delays[:4] == [0.2, 0.4, 0.8, 1.6]
    assert delays[-1] == 30.0 and delays == sorted(delays)
    assert reconnect_delay(3, 30.0, jitter=1.0) == 0.8
    assert reconnect_delay(10_000, 30.0) == 30.0
