"""The fake's WebSocket API user data stream, to the letter of binance-spot-api-docs
(web-socket-api.md "User Data Stream requests", "Session Authentication"; user-data-stream.md
"Order Update"), driven with a plain WebSocket client and our own REST client.

Where the docs say nothing, the test says so: the error for ``session.logon`` with a key that
is not Ed25519 is not documented (the fake answers -1022, as client authors report).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import ClientConnection, connect

from worker.exchanges.base import OcoRequest, OrderRequest
from worker.exchanges.binance import BinanceClient
from worker.exchanges.signing import Credentials
from worker.exchanges.user_stream import signed_params
from worker.testing.fake_binance import FakeAccount, FakeBinance

D = Decimal
# user-data-stream.md "Order Update": the fields every executionReport carries
REPORT_FIELDS = frozenset("eEsScofqpPFgCxXrilzLnNTtIwmMOZYQV")  # one letter each


@pytest.fixture
def fake() -> Iterator[FakeBinance]:
    with FakeBinance(api_key="key-a", api_secret="secret-a") as server:
        server.set_price("BTCUSDT", "100")
        server.set_commission("0.001", "quote")
        yield server


def credentials_of(account: FakeAccount) -> Credentials:
    secret = account.api_secret or account.private_key_pem
    assert secret is not None
    return Credentials.of(account.api_key, secret, account.key_type)


def call(ws: ClientConnection, method: str, params: dict[str, Any] | None = None) -> Any:
    ws.send(json.dumps({"id": method, "method": method, "params": params or {}}))
    while True:
        answer = json.loads(ws.recv(timeout=5))
        if answer.get("id") == method:
            return answer


def events(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    return [json.loads(ws.recv(timeout=5)) for _ in range(count)]


def subscribe(ws: ClientConnection, fake: FakeBinance, account: FakeAccount) -> Any:
    params = signed_params(credentials_of(account), fake.now_ms(), 5000)
    return call(ws, "userDataStream.subscribe.signature", params)


@pytest.mark.parametrize("key_type", ["hmac", "rsa", "ed25519"])
def test_subscribe_by_signature_with_each_key_type(fake: FakeBinance, key_type: Any) -> None:
    account = fake.add_account("b", key_type=key_type)
    with connect(fake.ws_api_url) as ws:
        answer = subscribe(ws, fake, account)
        assert answer["status"] == 200
        assert answer["result"] == {"subscriptionId": 0}
        assert answer["rateLimits"][0]["rateLimitType"] == "REQUEST_WEIGHT"
        assert call(ws, "session.subscriptions")["result"] == [{"subscriptionId": 0}]
        assert call(ws, "session.status")["result"]["userDataStream"] is True


def test_hmac_signature_is_case_insensitive_and_a_bad_one_is_refused(fake: FakeBinance) -> None:
    """web-socket-api.md "Signature Case Sensitivity"; errors.md -1022, -2015."""
    params = {"apiKey": "key-a", "timestamp": fake.now_ms()}
    payload = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
    good = hmac.new(b"secret-a", payload.encode(), hashlib.sha256).hexdigest()
    with connect(fake.ws_api_url) as ws:
        bad = call(ws, "userDataStream.subscribe.signature", {**params, "signature": "00" * 32})
        assert (bad["status"], bad["error"]["code"]) == (400, -1022)
        unknown = call(
            ws, "userDataStream.subscribe.signature",
            {**params, "apiKey": "nobody", "signature": good},
        )  # fmt: skip
        assert unknown["error"]["code"] == -2015
        ok = call(ws, "userDataStream.subscribe.signature", {**params, "signature": good.upper()})
        assert ok["status"] == 200
        again = call(ws, "userDataStream.subscribe.signature", {**params, "signature": good})
        assert again["error"]["code"] == -2035  # one subscription per account and connection


def test_session_logon_takes_ed25519_keys_only(fake: FakeBinance) -> None:
    """web-socket-api.md "Session Authentication": "Only Ed25519 keys are supported"."""
    ed = fake.add_account("ed", key_type="ed25519")
    with connect(fake.ws_api_url) as ws:
        refused = call(ws, "userDataStream.subscribe")
        assert refused["status"] == 401  # not logged on
        hmac_logon = call(ws, "session.logon", signed_params(credentials_of(fake.account()),
                                                             fake.now_ms(), 5000))  # fmt: skip
        assert hmac_logon["error"]["code"] == -1022  # undocumented: see the module doc
        logon = call(ws, "session.logon", signed_params(credentials_of(ed), fake.now_ms(), 5000))
        assert logon["result"]["apiKey"] == ed.api_key
        assert logon["result"]["userDataStream"] is False
        assert call(ws, "userDataStream.subscribe")["result"] == {"subscriptionId": 0}
        logout = call(ws, "session.logout")  # ends the logon's subscription
        assert logout["result"]["userDataStream"] is False


def test_unsubscribe_ends_the_stream_with_event_stream_terminated(fake: FakeBinance) -> None:
    with connect(fake.ws_api_url) as ws:
        subscribe(ws, fake, fake.account())
        ws.send(json.dumps({"id": 9, "method": "userDataStream.unsubscribe"}))
        terminated, answer = events(ws, 2)
        assert terminated == {
            "subscriptionId": 0,
            "event": {"e": "eventStreamTerminated", "E": terminated["event"]["E"]},
        }
        assert (answer["id"], answer["status"], answer["result"]) == (9, 200, {})


def read_until(ws: ClientConnection, *wanted: str) -> dict[str, dict[str, Any]]:
    """Pushed events until each of ``wanted`` came: an executionReport as "client id/
    execution type" (a cancel by the cancelled order's id), the others by event type."""
    seen: dict[str, dict[str, Any]] = {}
    while not all(w in seen for w in wanted):
        event = json.loads(ws.recv(timeout=5))["event"]
        key = f"{event['c']}/{event['x']}" if event["e"] == "executionReport" else event["e"]
        if event["e"] == "executionReport" and event["x"] == "CANCELED":
            key = f"{event['C']}/CANCELED"
        seen[key] = event
    return seen


@pytest.mark.anyio
async def test_place_fill_cancel_and_oco_push_execution_reports(fake: FakeBinance) -> None:
    fake.set_balances({"USDT": "1000", "BTC": "1"})
    async with BinanceClient("key-a", "secret-a", base_url=fake.base_url) as client:
        with connect(fake.ws_api_url) as ws:
            subscribe(ws, fake, fake.account())
            buy = OrderRequest("BTCUSDT", "buy", "limit", "buy-1", D("0.5"), price=D("95"))
            await client.place_order(buy)
            new = read_until(ws, "buy-1/NEW")["buy-1/NEW"]
            fake.set_price("BTCUSDT", "95")
            got = read_until(ws, "buy-1/TRADE", "outboundAccountPosition")
            trade = got["buy-1/TRADE"]
            assert got["outboundAccountPosition"]["B"] == [
                {"a": "BTC", "f": "1.50000000", "l": "0.00000000"},
                {"a": "USDT", "f": "952.45250000", "l": "0.00000000"},
            ]
            rest = OrderRequest("BTCUSDT", "buy", "limit", "buy-2", D("0.1"), price=D("90"))
            await client.place_order(rest)
            await client.cancel_order("BTCUSDT", "buy-2")
            cancelled = read_until(ws, "buy-2/NEW", "buy-2/CANCELED")["buy-2/CANCELED"]
            oco = OcoRequest("BTCUSDT", "sell", D("0.5"), "list-1", "stop-1", D("80"), "take-1",
                             D("130"))  # fmt: skip
            await client.place_oco(oco)
            placed = read_until(ws, "stop-1/NEW", "take-1/NEW")
            fake.set_price("BTCUSDT", "130")
            fired = read_until(ws, "take-1/TRADE", "stop-1/EXPIRED")
    reports = [new, trade, cancelled, *placed.values(), *fired.values()]
    for report in reports:
        if report["e"] == "executionReport":
            assert set(report) >= REPORT_FIELDS, REPORT_FIELDS - set(report)
    assert (new["x"], new["X"], new["i"]) == ("NEW", "NEW", fake.orders("buy-1")[0]["orderId"])
    assert (trade["X"], trade["l"], trade["L"], trade["z"]) == (
        "FILLED", "0.50000000", "95.00000000", "0.50000000",
    )  # fmt: skip
    assert (trade["n"], trade["N"], trade["Z"], trade["m"]) == (
        "0.04750000", "USDT", "47.50000000", True,
    )  # fmt: skip
    assert trade["t"] == int(fake.trades()[0]["id"])
    assert (cancelled["X"], cancelled["C"]) == ("CANCELED", "buy-2")  # C: the cancelled order
    assert cancelled["c"] != "buy-2"  # c: the cancel's own id
    assert placed["listStatus"]["L"] == "EXECUTING"
    assert {o["c"] for o in placed["listStatus"]["O"]} == {"stop-1", "take-1"}
    assert fired["take-1/TRADE"]["X"] == "FILLED"
    assert fired["stop-1/EXPIRED"]["eR"] == "OCO_TRIGGER"
    assert fired["listStatus"]["L"] == "ALL_DONE"


@pytest.mark.anyio
async def test_faults_lose_events_and_drop_the_connection(fake: FakeBinance) -> None:
    async with BinanceClient("key-a", "secret-a", base_url=fake.base_url) as client:
        with connect(fake.ws_api_url) as ws:
            subscribe(ws, fake, fake.account())
            fake.ws_api.lose_events(1)  # a gap: the order's NEW is never sent
            buy = OrderRequest("BTCUSDT", "buy", "limit", "buy-1", D("0.5"), price=D("95"))
            await client.place_order(buy)
            fake.set_price("BTCUSDT", "95")
            first = json.loads(ws.recv(timeout=5))["event"]
            assert (first["c"], first["x"]) == ("buy-1", "TRADE")
            assert fake.ws_api.drop_connections() == 1
            with pytest.raises(ConnectionClosedError):  # cut: no close frame
                while True:
                    ws.recv(timeout=5)
