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
ORDER_TYPES = frozenset(
    {"MARKET", "LIMIT", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"}
)
EIGHT = Decimal("0.00000001")


class ApiError(Exception):
    """A Binance error answer: HTTP status, code and message."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(f"{status} {code} {msg}")
        self.status, self.code, self.msg = status, code, msg


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
) -> dict[str, Any]:
    """One exchangeInfo ``symbols`` entry in Binance's JSON shape."""
    return {
        "symbol": symbol,
        "status": "TRADING",
        "baseAsset": base,
        "quoteAsset": quote,
        "baseAssetPrecision": 8,
        "quoteAssetPrecision": 8,
        "orderTypes": sorted(ORDER_TYPES),
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": tick,
                "maxPrice": "1000000.00",
                "tickSize": tick,
            },
            {"filterType": "LOT_SIZE", "minQty": min_qty, "maxQty": max_qty, "stepSize": step},
            {
                "filterType": "NOTIONAL",
                "minNotional": min_notional,
                "applyMinToMarket": True,
                "maxNotional": "9000000.00",
                "applyMaxToMarket": False,
                "avgPriceMins": 5,
            },
        ],
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
            Decimal(f["NOTIONAL"]["minNotional"]),
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
            "timeInForce": "GTC",
            "type": self.type,
            "side": self.side,
            "stopPrice": f8(self.stop_price),
            "icebergQty": f8(None),
            "time": self.time_ms,
            "updateTime": self.update_ms or self.time_ms,
            "isWorking": self.type in ("MARKET", "LIMIT") or self.triggered,
            "workingTime": self.time_ms,
            "origQuoteOrderQty": f8(self.quote_order_qty),
            "selfTradePreventionMode": "EXPIRE_MAKER",
        }

    def full_json(self, fills: list[Trade]) -> dict[str, Any]:
        """The ``POST /api/v3/order`` answer with ``newOrderRespType=FULL``."""
        body = self.json()
        for key in ("stopPrice", "icebergQty", "time", "updateTime", "isWorking"):
            body.pop(key)
        body["transactTime"] = self.time_ms
        body["fills"] = [t.fill_json() for t in fills]
        return body

    def report_json(self) -> dict[str, Any]:
        """One ``orderReports`` entry of an order list answer."""
        body = self.json()
        for key in ("icebergQty", "time", "updateTime", "isWorking", "origQuoteOrderQty"):
            body.pop(key)
        body["transactTime"] = self.time_ms
        return body

    def cancel_json(self, cancel_id: str, now_ms: int) -> dict[str, Any]:
        body = self.full_json([])
        del body["fills"]
        body.update(origClientOrderId=self.client_id, clientOrderId=cancel_id, transactTime=now_ms)
        return body
