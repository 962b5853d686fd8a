"""What every account of the fake Binance shares: symbols, prices, ids and the engine's knobs.

One :class:`Market` per :class:`~worker.testing.fake_binance.FakeBinance`; each account's
:class:`~worker.testing.fake_binance.book.Book` points at it. Order, trade and order-list ids
come from one counter each, so an id is never reused between accounts (rest-api.md "Query
order": an order of another account is simply "Order does not exist.").
"""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any, Literal

from worker.testing.fake_binance.orders import DEFAULT_PRICES, Spec

CommissionMode = Literal["received", "quote", "base", "BNB"]

# rest-api.md "Exchange information" / enums.md "Rate limiters": the docs' example values.
DEFAULT_RATE_LIMITS: tuple[dict[str, Any], ...] = (
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 50},
    {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 160000},
    {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
)
# filters.md "Exchange Filters": the docs' example values.
DEFAULT_EXCHANGE_FILTERS: tuple[dict[str, Any], ...] = (
    {"filterType": "EXCHANGE_MAX_NUM_ORDERS", "maxNumOrders": 1000},
    {"filterType": "EXCHANGE_MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 200},
)


class Market:
    """Symbols (exchangeInfo entries), last prices, id counters and matching settings."""

    def __init__(self, symbols: tuple[dict[str, Any], ...]) -> None:
        self.symbols: dict[str, dict[str, Any]] = {s["symbol"]: dict(s) for s in symbols}
        self.rate_limits: list[dict[str, Any]] = [dict(r) for r in DEFAULT_RATE_LIMITS]
        self.exchange_filters: list[dict[str, Any]] = [dict(f) for f in DEFAULT_EXCHANGE_FILTERS]
        self.specs = {s["symbol"]: Spec.parse(s) for s in symbols}
        self.prices: dict[str, Decimal] = {
            k: v for k, v in DEFAULT_PRICES.items() if k in self.specs
        }
        self.partial_fills = 1
        self.fill_price_step = Decimal(0)
        self.liquidity: dict[str, Decimal] = {}  # max quantity matched per price event
        self.commission_rate = Decimal("0.001")
        self.commission_mode: CommissionMode = "received"
        self.in_match: dict[str, Decimal] = {}  # symbol -> fill this much, then STP expires
        self.order_ids = itertools.count(1001)
        self.trade_ids = itertools.count(5001)
        self.list_ids = itertools.count(1)

    @property
    def exchange_info(self) -> dict[str, Any]:
        """``GET /api/v3/exchangeInfo`` without ``serverTime`` (the server adds it)."""
        return {
            "timezone": "UTC",
            "rateLimits": [dict(r) for r in self.rate_limits],
            "exchangeFilters": [dict(f) for f in self.exchange_filters],
            "symbols": [dict(s) for s in self.symbols.values()],
        }

    def set_rate_limit(self, kind: str, interval: str, interval_num: int, limit: int) -> None:
        """Set (or add) one ``rateLimits`` entry, e.g. ``("REQUEST_WEIGHT", "MINUTE", 1, 100)``."""
        for r in self.rate_limits:
            if (r["rateLimitType"], r["interval"], r["intervalNum"]) == (
                kind,
                interval,
                interval_num,
            ):
                r["limit"] = limit
                return
        self.rate_limits.append(
            {
                "rateLimitType": kind,
                "interval": interval,
                "intervalNum": interval_num,
                "limit": limit,
            }
        )
