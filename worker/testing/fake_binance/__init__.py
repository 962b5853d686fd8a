"""A stateful fake of Binance spot REST on a loopback port, for tests.

Not a mock of our client: a real HTTP server (stdlib ``ThreadingHTTPServer`` in a background
thread) that speaks Binance's REST API, so the real :class:`~worker.exchanges.binance.
BinanceClient` is exercised end to end, signing and HTTP included::

    with FakeBinance(api_key="k", api_secret="s") as fake:   # or .start() / .stop()
        client = BinanceClient("k", "s", base_url=fake.base_url)
        fake.set_price("BTCUSDT", Decimal("51000"))          # fills resting orders
        fake.faults.push(Fault.drop_after_apply())           # next POST /api/v3/order
        fake.order_count("my-client-id")                     # orders created with that id

Modules: :mod:`.server` (HTTP, auth, recording), :mod:`.book` (matching), :mod:`.orders`
(wire shapes), :mod:`.faults` (the scripted fault queue).

Usable from sync and async tests alike (it runs in its own thread). It checks the API key
(-2015) and the HMAC signature (-1022) and the timestamp against its own clock (-1021), keeps
orders with Binance's duplicate-id rule (``newClientOrderId`` unique only among *open*
orders), applies symbol filters (-1013), fills market orders at the set price (optionally in
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
recorded in :attr:`requests`.
"""

from worker.testing.fake_binance.faults import Fault, FaultKind, FaultQueue
from worker.testing.fake_binance.orders import DEFAULT_SYMBOLS, binance_symbol
from worker.testing.fake_binance.server import FakeBinance, RecordedRequest

__all__ = [
    "DEFAULT_SYMBOLS",
    "FakeBinance",
    "Fault",
    "FaultKind",
    "FaultQueue",
    "RecordedRequest",
    "binance_symbol",
]
