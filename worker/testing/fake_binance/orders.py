"""Values of the fake Binance: symbols, orders and trades, and their JSON shapes on the wire.

Numbers are Decimal and go on the wire as 8-decimal strings, like Binance's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

OPEN = frozenset({"NEW", "PARTIALLY_FILLED"})
CLIENT_ID = re.compile(r"^[a-zA-Z0-9\-_]{1,36}$")
# enums.md "Order types (orderTypes, type)"
ORDER_TYPES = frozenset(
    {
        "MARKET",
        "LIMIT",
        "LIMIT_MAKER",
        "STOP_LOSS",
        "STOP_LOSS_LIMIT",
        "TAKE_PROFIT",
        "TAKE_PROFIT_LIMIT",
    }
)
TIME_IN_FORCE = ("GTC", "IOC", "FOK")  # enums.md "Time in force (timeInForce)"
# enums.md "STP Modes"
STP_MODES = ("NONE", "EXPIRE_MAKER", "EXPIRE_TAKER", "EXPIRE_BOTH", "DECREMENT", "TRANSFER")
EIGHT = Decimal("0.00000001")


class ApiError(Exception):
    """A Binance error answer: HTTP status, code and message."""

    def __init__(self, status: int, code: int, msg: str, data: Any = None) -> None:
        super().__init__(f"{status} {code} {msg}")
        self.status, self.code, self.msg, self.data = status, code, msg, data

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "msg": self.msg}
        if self.data is not None:  # cancelReplace failures carry a "data" object
            body["data"] = self.data
        return body


def binance_symbol(
    symbol: str,
    base: str,
    quote: str,
    *,
    tick: str,
    step: str,
    min_qty: str,
    max_qty: str = "9000",
    min_notional: str = "5",
    max_algo_orders: int = 5,
    extra_filters: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    """One exchangeInfo ``symbols`` entry in Binance's JSON shape (rest-api.md "Exchange
    information"), its filters those of filters.md with the docs' example limits."""
    return {
        "symbol": symbol,
        "status": "TRADING",
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": sorted(ORDER_TYPES),
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": False,
        "opoAllowed": False,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": False,  # trailingDelta is refused: the fake does not trail
        "cancelReplaceAllowed": True,
        "amendAllowed": True,
        "pegInstructionsAllowed": False,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": tick,
                "maxPrice": "1000000.00",
                "tickSize": tick,
            },
            {"filterType": "LOT_SIZE", "minQty": min_qty, "maxQty": max_qty, "stepSize": step},
            {"filterType": "ICEBERG_PARTS", "limit": 10},
            {
                "filterType": "MARKET_LOT_SIZE",
                "minQty": "0.00000000",
                "maxQty": max_qty,
                "stepSize": "0.00000000",
            },
            {
                "filterType": "NOTIONAL",
                "minNotional": min_notional,
                "applyMinToMarket": True,
                "maxNotional": "9000000.00",
                "applyMaxToMarket": False,
                "avgPriceMins": 5,
            },
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": max_algo_orders},
            {"filterType": "MAX_NUM_ORDER_LISTS", "maxNumOrderLists": 20},
            *extra_filters,
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": list(STP_MODES),
    }


DEFAULT_SYMBOLS: tuple[dict[str, Any], ...] = (
    binance_symbol("BTCUSDT", "BTC", "USDT", tick="0.01", step="0.00001", min_qty="0.00001"),
    binance_symbol("ETHUSDT", "ETH", "USDT", tick="0.01", step="0.0001", min_qty="0.0001"),
    binance_symbol("BNBUSDT", "BNB", "USDT", tick="0.01", step="0.001", min_qty="0.001"),
)
DEFAULT_PRICES = {
    "BTCUSDT": Decimal("50000"),
    "ETHUSDT": Decimal("3000"),
    "BNBUSDT": Decimal("500"),
}


@dataclass(frozen=True)
class Spec:
    symbol: str
    base: str
    quote: str
    tick: Decimal
    step: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: Decimal

    @classmethod
    def parse(cls, info: Mapping[str, Any]) -> Spec:
        f = {x["filterType"]: x for x in info["filters"]}
        return cls(
            info["symbol"],
            info["baseAsset"],
            info["quoteAsset"],
            Decimal(f["PRICE_FILTER"]["tickSize"]),
            Decimal(f["LOT_SIZE"]["stepSize"]),
            Decimal(f["LOT_SIZE"]["minQty"]),
            Decimal(f["LOT_SIZE"]["maxQty"]),
            Decimal((f.get("NOTIONAL") or f.get("MIN_NOTIONAL") or {}).get("minNotional", 0)),
        )


def f8(value: Decimal | None) -> str:
    return f"{(value or Decimal(0)).quantize(EIGHT):f}"


@dataclass
class Trade:
    id: int
    order_id: int
    symbol: str
    is_buyer: bool
    is_maker: bool
    price: Decimal
    qty: Decimal
    commission: Decimal
    commission_asset: str
    time_ms: int

    def fill_json(self) -> dict[str, Any]:
        return {
            "price": f8(self.price),
            "qty": f8(self.qty),
            "commission": f8(self.commission),
            "commissionAsset": self.commission_asset,
            "tradeId": self.id,
        }

    def my_trade_json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "id": self.id,
            "orderId": self.order_id,
            "orderListId": -1,
            "price": f8(self.price),
            "qty": f8(self.qty),
            "quoteQty": f8(self.price * self.qty),
            "commission": f8(self.commission),
            "commissionAsset": self.commission_asset,
            "time": self.time_ms,
            "isBuyer": self.is_buyer,
            "isMaker": self.is_maker,
            "isBestMatch": True,
        }


@dataclass
class Order:
    order_id: int
    client_id: str
    symbol: str
    side: str
    type: str
    orig_qty: Decimal
    price: Decimal | None
    stop_price: Decimal | None
    quote_order_qty: Decimal | None
    time_ms: int
    status: str = "NEW"
    executed: Decimal = Decimal(0)
    cum_quote: Decimal = Decimal(0)
    update_ms: int = 0
    triggered: bool = False
    hidden_lookups: int = 0
    order_list_id: int = -1  # an OCO leg: the list it belongs to
    trades: list[Trade] = field(default_factory=list)
    time_in_force: str = "GTC"
    iceberg_qty: Decimal | None = None
    stp_mode: str = "EXPIRE_MAKER"
    account: str = ""  # the name of the account that placed it

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    @property
    def remaining(self) -> Decimal:
        return self.orig_qty - self.executed

    def json(self) -> dict[str, Any]:
        """The ``GET /api/v3/order`` shape."""
        return {
            "symbol": self.symbol,
            "orderId": self.order_id,
            "orderListId": self.order_list_id,
            "clientOrderId": self.client_id,
            "price": f8(self.price),
            "origQty": f8(self.orig_qty),
            "executedQty": f8(self.executed),
            "cummulativeQuoteQty": f8(self.cum_quote),
            "status": self.status,
            "timeInForce": self.time_in_force,
            "type": self.type,
            "side": self.side,
            "stopPrice": f8(self.stop_price),
            "icebergQty": f8(None),
            "time": self.time_ms,
            "updateTime": self.update_ms or self.time_ms,
            "isWorking": self.type in ("MARKET", "LIMIT") or self.triggered,
            "workingTime": self.time_ms if self.is_working else -1,
            "origQuoteOrderQty": f8(self.quote_order_qty),
            "selfTradePreventionMode": self.stp_mode,
        }

    @property
    def is_working(self) -> bool:
        """On the book (or done): a stop order is not working until it triggers."""
        return self.stop_price is None or self.triggered

    def ack_json(self) -> dict[str, Any]:
        """rest-api.md "New order", Response - ACK."""
        return {
            "symbol": self.symbol,
            "orderId": self.order_id,
            "orderListId": self.order_list_id,
            "clientOrderId": self.client_id,
            "transactTime": self.time_ms,
        }

    def result_json(self) -> dict[str, Any]:
        """rest-api.md "New order", Response - RESULT (with the conditional fields)."""
        body = self.ack_json()
        full = self.json()
        for key in ("price", "origQty", "executedQty", "origQuoteOrderQty",
                    "cummulativeQuoteQty", "status", "timeInForce", "type", "side"):  # fmt: skip
            body[key] = full[key]
        body["workingTime"] = full["workingTime"]
        body["selfTradePreventionMode"] = self.stp_mode
        if self.stop_price is not None:
            body["stopPrice"] = f8(self.stop_price)
        if self.iceberg_qty is not None:
            body["icebergQty"] = f8(self.iceberg_qty)
        return body

    def response(self, resp_type: str, fills: list[Trade]) -> dict[str, Any]:
        """The answer to a placement, by ``newOrderRespType``."""
        if resp_type == "ACK":
            return self.ack_json()
        if resp_type == "RESULT":
            return self.result_json()
        return self.full_json(fills)

    def full_json(self, fills: list[Trade]) -> dict[str, Any]:
        """The ``POST /api/v3/order`` answer with ``newOrderRespType=FULL``."""
        return {**self.result_json(), "fills": [t.fill_json() for t in fills]}

    def report_json(self) -> dict[str, Any]:
        """One ``orderReports`` entry of an order list answer."""
        body = self.json()
        for key in ("icebergQty", "time", "updateTime", "isWorking", "origQuoteOrderQty"):
            body.pop(key)
        body["transactTime"] = self.time_ms
        return body

    def cancel_json(self, cancel_id: str, now_ms: int) -> dict[str, Any]:
        body = self.result_json()
        del body["workingTime"]
        body.update(origClientOrderId=self.client_id, clientOrderId=cancel_id, transactTime=now_ms)
        return body
