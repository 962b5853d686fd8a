"""A stateful fake of Binance spot REST on a loopback port, for tests.

Not a mock of our client: a real HTTP server (stdlib ``ThreadingHTTPServer`` in a background
thread) that speaks Binance's REST API, so the real :class:`~worker.exchanges.binance.
BinanceClient` is exercised end to end, signing and HTTP included::

    with FakeBinance(api_key="k", api_secret="s") as fake:   # or .start() / .stop()
        client = BinanceClient("k", "s", base_url=fake.base_url)
        fake.set_price("BTCUSDT", Decimal("51000"))          # fills resting orders
        fake.faults.push(Fault.drop_after_apply())           # next POST /api/v3/order
        fake.order_count("my-client-id")                     # orders created with that id

Several accounts, each with its own key, balances, orders and ORDERS counters (the market
-- prices, symbols, ids -- is shared)::

    other = fake.add_account("b", key_type="ed25519")   # or "hmac" / "rsa"; keys generated
    other.api_key, other.private_key_pem                 # (HMAC: other.api_secret)
    fake.set_balances({"USDT": "500"}, account="b")      # or other.set_balances(...)
    fake.orders(account="b"); fake.order_count(cid, account="b"); fake.trades(account="b")
    fake.requests_to("POST", "/api/v3/order", account="b")
    fake.disable_key(other.api_key)                      # -2015 from now on (enable_key)
    second = fake.add_key("b", key_type="hmac")          # another key of the same account
    fake.testnet_reset()                                 # or Fault.testnet_reset()
    fake.set_rate_limit("REQUEST_WEIGHT", "MINUTE", 1, 100)
    FakeBinance(..., clock=lambda: t[0])                 # windows and timestamps, no sleep

Modules: :mod:`.server` (accounts, requests, faults, records), :mod:`.serving` (HTTP),
:mod:`.table` (routes, weights), :mod:`.routes` / :mod:`.order_lists` (handlers),
:mod:`.signatures` (HMAC/RSA/Ed25519, timing), :mod:`.accounts` (keys), :mod:`.limits`
(REQUEST_WEIGHT, ORDERS, 429/418), :mod:`.filters` (filters.md), :mod:`.book`
(matching), :mod:`.market` (shared state), :mod:`.orders` (wire shapes), :mod:`.faults`.

Follows binance-spot-api-docs (rest-api.md, filters.md, errors.md, enums.md): signed
payload = query string + body as sent (HMAC hex any case, RSA PKCS#1 v1.5 SHA-256 and
Ed25519 base64), ``timestamp`` in ms or us, ``recvWindow`` <= 60000 with three decimals
(-1021 outside it), query string wins over body, -2014/-2015/-1022 for credentials, route
weights and ``X-MBX-USED-WEIGHT-1M`` / ``X-MBX-ORDER-COUNT-10S``/``-1D`` headers, 429
then 418, every filter present in exchangeInfo (-1013 "Filter failure: NAME"), LIMIT
GTC/IOC/FOK, LIMIT_MAKER, stop and take-profit orders, ACK/RESULT/FULL answers,
openOrders (GET/DELETE), allOrders, order/test, cancelReplace, amend/keepPriority, OCO
order lists (GET/DELETE orderList, openOrderList). Not modelled: trailing stops (refused,
``allowTrailingStop`` false), a real order book (depth shows one level each side of the
price), trade history for average prices (the last price is used).

Usable from sync and async tests alike (it runs in its own thread). It keeps
orders with Binance's duplicate-id rule (``newClientOrderId`` unique only among *open*
orders), fills market orders at the set price (optionally in
several partial fills, or partly then EXPIRED with :meth:`set_liquidity`, or EXPIRED_IN_MATCH
by self-trade prevention with :meth:`expire_in_match`), rests limit, stop-loss and take-profit
orders until :meth:`set_price` crosses them (or :meth:`end_order` cancels or expires one as
the user or the exchange would), and charges commission in the received asset,
quote, base or BNB. ``myTrades`` pages like Binance's (``limit``, ``fromId``; the most recent
trades without ``fromId``) and can lag the orders (:meth:`set_trades_lag`). OCO lists
(``POST /api/v3/orderList/oco``): two linked legs, each found and cancelled by its own client
id; cancelling (or :meth:`end_order`) one leg ends the list, a leg triggering expires the
other. With :meth:`set_balances`, open orders lock what they need (an OCO once), so a
second full-size SELL of one holding is refused -2010 as on Binance. Every request is
recorded in :attr:`requests` (with the account it was signed for).
"""

from worker.testing.fake_binance.accounts import FakeAccount
from worker.testing.fake_binance.faults import Fault, FaultKind, FaultQueue
from worker.testing.fake_binance.orders import DEFAULT_SYMBOLS, binance_symbol
from worker.testing.fake_binance.server import FakeBinance, RecordedRequest

__all__ = [
    "DEFAULT_SYMBOLS",
    "FakeAccount",
    "FakeBinance",
    "Fault",
    "FaultKind",
    "FaultQueue",
    "RecordedRequest",
    "binance_symbol",
]
