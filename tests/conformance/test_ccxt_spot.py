"""ccxt.binance (4.5.x, as shipped) against the fake: the fake must answer like Binance
spot as the public docs describe it (binance-spot-api-docs rest-api.md), so a third-party
client works on it unchanged.

ccxt picks its exception from its own maps: with a base URL that is not api.binance.com
it uses its common ``exceptions['exact']`` table, not the spot overrides, so e.g. -1021 is
``InvalidNonce`` here where real spot answers become ``BadRequest`` in ccxt. For 418 and
429 ccxt's binance ``handle_errors`` raises ``DDoSProtection`` before it reads the code.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import ccxt
import pytest

from tests.conformance.support import exchange
from worker.testing.fake_binance import FakeBinance, Fault

SYMBOL = "BTC/USDT"


@pytest.fixture
def fake() -> Iterator[FakeBinance]:
    with FakeBinance(api_key="conformanceKey", api_secret="conformanceSecret") as server:
        server.set_price("BTCUSDT", "100")
        server.set_balances({"USDT": "10000", "BTC": "1"})
        yield server


@pytest.fixture
def ex(fake: FakeBinance) -> ccxt.binance:
    return exchange(fake, "conformanceKey", "conformanceSecret")


def test_public_market_data(ex: ccxt.binance) -> None:
    """load_markets (exchangeInfo only, thanks to the spot-only options), fetch_time,
    fetch_ticker(s) (ticker/24hr), fetch_order_book (depth)."""
    markets = ex.load_markets()
    assert {"BTC/USDT", "ETH/USDT", "BNB/USDT"} <= set(markets)
    btc = markets[SYMBOL]
    assert btc["spot"] and btc["precision"]["price"] == 0.01
    assert btc["limits"]["cost"]["min"] == 5
    assert abs(ex.fetch_time() - ex.milliseconds()) < 5_000
    assert ex.fetch_ticker(SYMBOL)["last"] == 100
    assert set(ex.fetch_tickers()) >= {"BTC/USDT", "ETH/USDT"}
    book = ex.fetch_order_book(SYMBOL)
    assert book["bids"][0][0] < 100 < book["asks"][0][0]


def test_orders_through_their_life(fake: FakeBinance, ex: ccxt.binance) -> None:
    """create (market, limit GTC), fetch_order, fetch_open_orders with and without a
    symbol, cancel_order, fetch_orders (allOrders), fetch_my_trades, cancel_all_orders."""
    bought = ex.create_order(SYMBOL, "market", "buy", 0.1)
    assert bought["status"] == "closed" and bought["filled"] == 0.1
    assert bought["trades"] and bought["average"] == 100
    resting = ex.create_order(SYMBOL, "limit", "buy", 0.1, 90)
    assert resting["status"] == "open"
    assert ex.fetch_order(resting["id"], SYMBOL)["status"] == "open"
    assert [o["id"] for o in ex.fetch_open_orders(SYMBOL)] == [resting["id"]]
    assert [o["id"] for o in ex.fetch_open_orders()] == [resting["id"]]
    assert ex.cancel_order(resting["id"], SYMBOL)["status"] == "canceled"
    assert {o["id"] for o in ex.fetch_orders(SYMBOL)} == {bought["id"], resting["id"]}
    assert [t["order"] for t in ex.fetch_my_trades(SYMBOL)] == [bought["id"]]
    ex.create_order(SYMBOL, "limit", "sell", 0.1, 120)
    ex.create_order(SYMBOL, "limit", "sell", 0.1, 130)
    ex.cancel_all_orders(SYMBOL)
    assert ex.fetch_open_orders(SYMBOL) == []
    assert ex.fetch_balance()["USDT"]["total"] == pytest.approx(
        10000 - 10
    )  # BUY commission: in BTC


def test_time_in_force_and_post_only(fake: FakeBinance, ex: ccxt.binance) -> None:
    """enums.md "Time in force": IOC fills what it can and expires the rest, FOK fills
    whole or expires untouched; LIMIT_MAKER (ccxt postOnly) that would take is refused
    -2010 "Order would immediately match and take." (errors.md)."""
    fake.set_liquidity("BTCUSDT", "0.04")
    ioc = ex.create_order(SYMBOL, "limit", "buy", 0.1, 101, {"timeInForce": "IOC"})
    assert (ioc["status"], ioc["filled"]) == ("expired", 0.04)
    fok = ex.create_order(SYMBOL, "limit", "buy", 0.1, 101, {"timeInForce": "FOK"})
    assert (fok["status"], fok["filled"]) == ("expired", 0.0)
    with pytest.raises(ccxt.InvalidOrder, match="immediately match and take"):
        ex.create_order(SYMBOL, "limit", "buy", 0.1, 101, {"postOnly": True})
    maker = ex.create_order(SYMBOL, "limit", "buy", 0.1, 99, {"postOnly": True})
    assert maker["status"] == "open" and fake.orders(maker["clientOrderId"])[0]["type"] == (
        "LIMIT_MAKER"
    )


def test_edit_order_is_cancel_replace(ex: ccxt.binance) -> None:
    """ccxt's spot edit_order is POST /api/v3/order/cancelReplace (rest-api.md "Cancel an
    Existing Order and Send a New Order")."""
    first = ex.create_order(SYMBOL, "limit", "buy", 0.1, 90)
    edited = ex.edit_order(first["id"], SYMBOL, "limit", "buy", 0.2, 91)
    assert edited["id"] != first["id"] and edited["price"] == 91
    assert ex.fetch_order(first["id"], SYMBOL)["status"] == "canceled"
    assert [o["id"] for o in ex.fetch_open_orders(SYMBOL)] == [edited["id"]]


@pytest.mark.parametrize("key_type", ["hmac", "ed25519", "rsa"])
def test_every_key_type_signs(fake: FakeBinance, key_type: str) -> None:
    """rest-api.md "SIGNED Endpoint Examples": HMAC, RSA and Ed25519 keys; ccxt signs with
    the PEM private key as its ``secret``. The order lands in that account only."""
    account = fake.add_account("other", key_type=key_type)  # type: ignore[arg-type]
    account.set_balances({"USDT": "500"})
    secret = account.api_secret or account.private_key_pem
    assert secret is not None
    other = exchange(fake, account.api_key, secret)
    assert other.fetch_balance()["USDT"]["free"] == 500
    order = other.create_order(SYMBOL, "limit", "buy", 0.1, 90)
    assert fake.order_count(order["clientOrderId"], account="other") == 1
    assert fake.order_count(order["clientOrderId"], account="default") == 0
    assert other.fetch_balance()["USDT"]["used"] == pytest.approx(9)


def test_accounts_do_not_see_each_other(fake: FakeBinance, ex: ccxt.binance) -> None:
    """Another account's order id is "Order does not exist." (-2013) to look up and
    "Unknown order sent." (-2011) to cancel; both are ccxt.OrderNotFound."""
    mine = ex.create_order(SYMBOL, "limit", "buy", 0.1, 90)
    account = fake.add_account("stranger")
    stranger = exchange(fake, account.api_key, account.api_secret or "")
    with pytest.raises(ccxt.OrderNotFound):
        stranger.fetch_order(mine["id"], SYMBOL)
    with pytest.raises(ccxt.OrderNotFound):
        stranger.cancel_order(mine["id"], SYMBOL)
    assert stranger.fetch_open_orders(SYMBOL) == []
    assert ex.fetch_order(mine["id"], SYMBOL)["status"] == "open"


def test_credential_errors(fake: FakeBinance) -> None:
    """-2015 unknown or disabled key, -2014 malformed key, -1022 bad signature: ccxt
    raises AuthenticationError for all three (its common map)."""
    for key, secret in (("unknownKey", "x"), ("bad key!", "x"), ("conformanceKey", "wrong")):
        with pytest.raises(ccxt.AuthenticationError):
            exchange(fake, key, secret).fetch_balance()
    fake.disable_key("conformanceKey")
    with pytest.raises(ccxt.AuthenticationError, match="-2015"):
        exchange(fake, "conformanceKey", "conformanceSecret").fetch_balance()
    codes = [r.status for r in fake.requests_to("GET", "/api/v3/account")]
    assert codes == [401, 401, 400, 401]


def test_timestamp_outside_recv_window(fake: FakeBinance, ex: ccxt.binance) -> None:
    """rest-api.md "Timing security": -1021, which ccxt's common map calls InvalidNonce."""
    fake.time_offset_ms = 90_000
    with pytest.raises(ccxt.InvalidNonce):
        ex.fetch_balance()


def test_order_errors(fake: FakeBinance, ex: ccxt.binance) -> None:
    """-2013 -> OrderNotFound; -2010 insufficient balance -> InsufficientFunds (ccxt
    matches the message); -1013 filter failure -> InvalidOrder (ccxt matches LOT_SIZE);
    -1121 -> BadSymbol."""
    with pytest.raises(ccxt.OrderNotFound):
        ex.fetch_order("424242", SYMBOL)
    with pytest.raises(ccxt.InsufficientFunds):
        ex.create_order(SYMBOL, "limit", "buy", 200, 99)
    with pytest.raises(ccxt.InvalidOrder, match="LOT_SIZE"):
        ex.private_post_order(
            {
                "symbol": "BTCUSDT",
                "side": "BUY",
                "type": "LIMIT",
                "timeInForce": "GTC",
                "quantity": "0.000011",
                "price": "90",
            }
        )
    with pytest.raises(ccxt.BadSymbol):
        ex.public_get_ticker_price({"symbol": "NOPEUSDT"})


def test_rate_limit_then_ban(fake: FakeBinance, ex: ccxt.binance) -> None:
    """A 429 (weight over the limit), then a request inside its window gets the 418 ban
    (rest-api.md "IP Limits"); ccxt raises DDoSProtection for both statuses."""
    fake.set_rate_limit("REQUEST_WEIGHT", "MINUTE", 1, 3)
    ex.fetch_time()
    assert ex.last_response_headers["X-MBX-USED-WEIGHT-1M"] == "1"
    ex.public_get_ticker_price({"symbol": "BTCUSDT"})
    with pytest.raises(ccxt.DDoSProtection, match="429"):
        ex.public_get_ticker_price({"symbol": "BTCUSDT"})
    with pytest.raises(ccxt.DDoSProtection, match="418"):
        ex.fetch_time()


def test_testnet_reset(fake: FakeBinance, ex: ccxt.binance) -> None:
    """After the testnet's wipe the order it acknowledged is "Order does not exist." and
    the balances are gone; the key still works."""
    order = ex.create_order(SYMBOL, "limit", "buy", 0.1, 90)
    fake.faults.push(Fault.testnet_reset(method="GET", path="/api/v3/order"))
    with pytest.raises(ccxt.OrderNotFound):
        ex.fetch_order(order["id"], SYMBOL)
    assert ex.fetch_balance()["total"] == {}
    assert Decimal(fake.orders().__len__()) == 0
