"""Every route of the fake: (method, path) -> weight, security, unfilled order count.

Weights and counts are rest-api.md's ("Weight:" and "Unfilled Order Count:" of each
endpoint); ``signed`` is every security type other than NONE ("Request Security").
"""

from __future__ import annotations

import worker.testing.fake_binance.order_lists as lists
import worker.testing.fake_binance.routes as r
from worker.testing.fake_binance.routes import Route, _by_symbol, _const, _depth_weight

OCO = "/api/v3/orderList/oco"

ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/api/v3/ping"): Route(lambda c: {}, _const(1)),
    ("GET", "/api/v3/time"): Route(lambda c: {"serverTime": c.fake.now_ms()}, _const(1)),
    ("GET", "/api/v3/exchangeInfo"): Route(r.exchange_info, _const(20)),
    ("GET", "/api/v3/depth"): Route(r.depth, _depth_weight),
    ("GET", "/api/v3/ticker/price"): Route(r.ticker_price, _by_symbol(2, 4)),
    ("GET", "/api/v3/ticker/24hr"): Route(r.ticker_24hr, _by_symbol(2, 80)),
    ("GET", "/api/v3/ticker/bookTicker"): Route(r.book_ticker, _by_symbol(2, 4)),
    ("GET", "/api/v3/account"): Route(r.account, _const(20), signed=True),
    ("POST", "/api/v3/order"): Route(r.new_order, _const(1), signed=True, orders=1),
    ("POST", "/api/v3/order/test"): Route(
        r.test_order,
        lambda p: 20 if p.get("computeCommissionRates") == "true" else 1,
        signed=True,
    ),
    ("GET", "/api/v3/order"): Route(r.query_order, _const(4), signed=True),
    ("DELETE", "/api/v3/order"): Route(r.cancel_order, _const(1), signed=True),
    ("POST", "/api/v3/order/cancelReplace"): Route(
        lists.cancel_replace, _const(1), signed=True, orders=1
    ),
    ("PUT", "/api/v3/order/amend/keepPriority"): Route(
        lists.amend_keep_priority, _const(4), signed=True
    ),
    ("GET", "/api/v3/openOrders"): Route(r.open_orders, _by_symbol(6, 80), signed=True),
    ("DELETE", "/api/v3/openOrders"): Route(r.cancel_open_orders, _const(1), signed=True),
    ("GET", "/api/v3/allOrders"): Route(r.all_orders, _const(20), signed=True),
    ("GET", "/api/v3/myTrades"): Route(
        r.my_trades, lambda p: 5 if "orderId" in p else 20, signed=True
    ),
    ("POST", OCO): Route(lists.new_oco, _const(1), signed=True, orders=2),
    ("GET", "/api/v3/orderList"): Route(lists.query_list, _const(4), signed=True),
    ("DELETE", "/api/v3/orderList"): Route(lists.cancel_list, _const(1), signed=True),
    ("GET", "/api/v3/openOrderList"): Route(lists.open_lists, _const(6), signed=True),
}
