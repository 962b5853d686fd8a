"""The fake's rules, checked over raw HTTP against the letter of binance-spot-api-docs
(rest-api.md, filters.md, errors.md), where ccxt alone would not show them."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from worker.testing.fake_binance import FakeBinance
from worker.testing.fake_binance.orders import ApiError
from worker.testing.fake_binance.signatures import verify

KEY, SECRET = "rulesKey", "rulesSecret"
NOW = 1_700_000_000.0


@pytest.fixture
def clock() -> list[float]:
    return [NOW]


@pytest.fixture
def fake(clock: list[float]) -> Iterator[FakeBinance]:
    with FakeBinance(api_key=KEY, api_secret=SECRET, clock=lambda: clock[0]) as server:
        server.set_price("BTCUSDT", "100")
        yield server


def _sign(payload: str, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def send(
    fake: FakeBinance,
    method: str,
    path: str,
    query: dict[str, str],
    body: dict[str, str] | None = None,
    *,
    sign: str | None = None,
) -> httpx.Response:
    """A signed request; ``query`` and ``body`` as given (timestamp added to the query)."""
    q = urlencode({**query, "timestamp": str(fake.now_ms())})
    b = urlencode(body or {})
    signature = sign if sign is not None else _sign(q + b)
    return httpx.request(
        method,
        f"{fake.base_url}{path}?{q}&signature={signature}",
        content=b,
        headers={"X-MBX-APIKEY": KEY, "Content-Type": "application/x-www-form-urlencoded"},
    )


LIMIT_BUY = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
             "quantity": "0.1", "price": "90"}  # fmt: skip


def test_docs_hmac_example_vector() -> None:
    """rest-api.md "HMAC Keys": the docs' own key, payload and signature; the hex is "not
    case-sensitive"."""
    payload = ("symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1"
               "&recvWindow=5000&timestamp=1499827319559")  # fmt: skip
    secret = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
    good = "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
    verify("hmac", secret, None, payload, good)
    verify("hmac", secret, None, payload, good.upper())
    with pytest.raises(ApiError, match="-1022"):
        verify("hmac", secret, None, payload.replace("BUY", "SELL"), good)


def test_payload_is_query_then_body(fake: FakeBinance) -> None:
    """rest-api.md: "the query string concatenated without separator to the HTTP body";
    parameters may be mixed between both."""
    query = {k: LIMIT_BUY[k] for k in ("symbol", "side", "type")}
    body = {k: LIMIT_BUY[k] for k in ("timeInForce", "quantity", "price")}
    assert send(fake, "POST", "/api/v3/order", query, body).status_code == 200
    q = urlencode({**query, "timestamp": str(fake.now_ms())})
    wrong = _sign(urlencode(body) + q)  # body first: not the documented payload
    answer = send(fake, "POST", "/api/v3/order", query, body, sign=wrong)
    assert answer.json()["code"] == -1022


def test_query_string_wins_over_body(fake: FakeBinance) -> None:
    """rest-api.md "General Information on Endpoints": "If a parameter sent in both the
    query string and request body, the query string parameter will be used"."""
    answer = send(fake, "POST", "/api/v3/order", LIMIT_BUY, {"quantity": "0.2"})
    assert answer.json()["origQty"] == "0.10000000"


def test_duplicate_parameter(fake: FakeBinance) -> None:
    """errors.md -1101: "Duplicate values for a parameter detected."."""
    url = f"{fake.base_url}/api/v3/ticker/price?symbol=BTCUSDT&symbol=ETHUSDT"
    assert httpx.get(url).json()["code"] == -1101


def test_recv_window_rules(fake: FakeBinance) -> None:
    """rest-api.md "Timing security": at most 60000, three decimals allowed; timestamps
    in microseconds accepted ("General API Information")."""
    ok = send(fake, "GET", "/api/v3/account", {"recvWindow": "6000.346"})
    assert ok.status_code == 200
    assert send(fake, "GET", "/api/v3/account", {"recvWindow": "60001"}).status_code == 400
    micro = urlencode({"timestamp": str(fake.now_ms() * 1000)})
    answer = httpx.get(
        f"{fake.base_url}/api/v3/account?{micro}&signature={_sign(micro)}",
        headers={"X-MBX-APIKEY": KEY},
    )
    assert answer.status_code == 200


def test_response_types_default_by_order_type(fake: FakeBinance) -> None:
    """rest-api.md "New order": MARKET and LIMIT default to FULL, all others to ACK."""
    limit = send(fake, "POST", "/api/v3/order", LIMIT_BUY).json()
    assert limit["fills"] == [] and limit["workingTime"] > 0
    stop = {"symbol": "BTCUSDT", "side": "SELL", "type": "STOP_LOSS", "quantity": "0.1",
            "stopPrice": "90"}  # fmt: skip
    ack = send(fake, "POST", "/api/v3/order", stop).json()
    assert set(ack) == {"symbol", "orderId", "orderListId", "clientOrderId", "transactTime"}
    result = send(fake, "POST", "/api/v3/order", {**stop, "newOrderRespType": "RESULT"}).json()
    assert result["stopPrice"] == "90.00000000" and result["workingTime"] == -1


def place(fake: FakeBinance, **params: str) -> dict[str, Any]:
    answer = send(fake, "POST", "/api/v3/order", params)
    body: dict[str, Any] = answer.json()
    return body


def test_max_num_algo_orders(fake: FakeBinance) -> None:
    """filters.md MAX_NUM_ALGO_ORDERS (5 in the docs' example): STOP_LOSS, STOP_LOSS_LIMIT,
    TAKE_PROFIT, TAKE_PROFIT_LIMIT open on the symbol; a LIMIT order is not one."""
    for i in range(5):
        assert "orderId" in place(fake, symbol="BTCUSDT", side="SELL", type="STOP_LOSS",
                                  quantity="0.1", stopPrice=str(90 - i))  # fmt: skip
    assert "orderId" in place(fake, **LIMIT_BUY)
    sixth = place(fake, symbol="BTCUSDT", side="SELL", type="TAKE_PROFIT", quantity="0.1",
                  stopPrice="110")  # fmt: skip
    assert sixth == {"code": -1013, "msg": "Filter failure: MAX_NUM_ALGO_ORDERS"}


@pytest.mark.parametrize(
    ("params", "code", "msg"),
    [
        ({"type": "LIMIT", "quantity": "0.1", "price": "90"}, -1102,
         "Mandatory parameter 'timeInForce' was not sent, was empty/null, or malformed."),
        ({"type": "LIMIT", "timeInForce": "GTX", "quantity": "0.1", "price": "90"}, -1115,
         "Invalid timeInForce."),
        ({"type": "FOO", "quantity": "0.1"}, -1116, "Invalid orderType."),
        ({"type": "LIMIT_MAKER", "quantity": "0.1", "price": "101"}, -2010,
         "Order would immediately match and take."),
        ({"type": "STOP_LOSS", "quantity": "0.1", "stopPrice": "99"}, -2010,
         "Order would trigger immediately."),
        ({"type": "LIMIT", "timeInForce": "GTC", "quantity": "0.1", "price": "90.001"}, -1013,
         "Filter failure: PRICE_FILTER"),
        ({"type": "LIMIT", "timeInForce": "GTC", "quantity": "0.01", "price": "90"}, -1013,
         "Filter failure: NOTIONAL"),
        ({"type": "STOP_LOSS", "quantity": "0.1", "trailingDelta": "100"}, -2010,
         "Trailing stop orders are not supported for this symbol."),
    ],
)  # fmt: skip
def test_order_rejections(fake: FakeBinance, params: dict[str, str], code: int, msg: str) -> None:
    """errors.md codes and messages (side BUY, BTCUSDT at 100)."""
    assert place(fake, symbol="BTCUSDT", side="BUY", **params) == {"code": code, "msg": msg}


def test_orders_rate_limit(fake: FakeBinance, clock: list[float]) -> None:
    """rest-api.md "Unfilled Order Count": X-MBX-ORDER-COUNT-10S/-1D on accepted orders,
    429 -1015 with Retry-After past the limit; a new 10 s window counts afresh."""
    fake.set_rate_limit("ORDERS", "SECOND", 10, 2)
    first = send(fake, "POST", "/api/v3/order", LIMIT_BUY)
    assert first.headers["X-MBX-ORDER-COUNT-10S"] == "1"
    assert first.headers["X-MBX-ORDER-COUNT-1D"] == "1"
    send(fake, "POST", "/api/v3/order", LIMIT_BUY)
    third = send(fake, "POST", "/api/v3/order", LIMIT_BUY)
    assert third.status_code == 429 and third.json()["code"] == -1015
    assert 0 < int(third.headers["Retry-After"]) <= 10
    clock[0] += 10
    fourth = send(fake, "POST", "/api/v3/order", LIMIT_BUY)
    assert fourth.status_code == 200 and fourth.headers["X-MBX-ORDER-COUNT-1D"] == "3"


def test_request_weight_window(fake: FakeBinance, clock: list[float]) -> None:
    """rest-api.md "IP Limits": used weight in X-MBX-USED-WEIGHT-1M (exchangeInfo 20,
    account 20, openOrders 6 with a symbol and 80 without); 429 past the limit, a new
    minute starts at 0."""
    fake.set_rate_limit("REQUEST_WEIGHT", "MINUTE", 1, 100)
    assert httpx.get(f"{fake.base_url}/api/v3/exchangeInfo").headers["X-MBX-USED-WEIGHT-1M"] == "20"
    assert (
        send(fake, "GET", "/api/v3/openOrders", {"symbol": "BTCUSDT"}).headers[
            "X-MBX-USED-WEIGHT-1M"
        ]
        == "26"
    )
    limited = send(fake, "GET", "/api/v3/openOrders", {})
    assert limited.status_code == 429 and "Retry-After" in limited.headers
    clock[0] += 60
    assert httpx.get(f"{fake.base_url}/api/v3/time").headers["X-MBX-USED-WEIGHT-1M"] == "1"
